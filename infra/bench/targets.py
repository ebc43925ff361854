"""The HTTP targets of `make bench`, running side by side; the one not being measured
is paused (`pausable`).

- sluice: Kafka, Redis, tokenizer, worker and gateway, as `make up` runs them.
- vllm-serve: vLLM's OpenAI server on the same model folder with the worker's engine
  settings (`python -m vllm.entrypoints.openai.api_server` is `vllm serve`).
- sluice-baseline (`--baseline DIR`): Sluice's services run from another checkout (an
  earlier commit, say) on its own Kafka and Redis: a change measured against what it
  changed, round by round in one run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infra.bench.engine_setup import EngineConfig, tame_children
from infra.localinfra import free_port, local_infra
from infra.procs import start_services
from services.worker.placement import engine_processes


@dataclass
class Running:
    name: str
    base_url: str  # without /v1
    processes: dict[str, int]  # service → root pid, for the RSS sampler
    # Process trees to SIGSTOP while another target is measured: the engine and the HTTP
    # front end. Processes with Kafka group sessions (and the broker) stay up, idle.
    pausable: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def private_env() -> dict[str, str]:
    """This environment without servers or models named in it: the benchmark starts its
    own Kafka and Redis and serves exactly one model."""
    drop = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SLUICE_MODELS", "SLUICE_MODEL",
            "SLUICE_MODEL_NAME", "WORKER_MODEL")
    return {key: value for key, value in os.environ.items() if key not in drop}


@contextmanager
def sluice(engine: EngineConfig, log_dir: Path, checkout: Path | None = None,
           name: str = "sluice") -> Iterator[Running]:
    """`checkout`: run the services from that checkout (its code, this environment)."""
    env = private_env()
    env.update(engine.env())
    env.update({"SLUICE_MODEL": str(engine.model), "GATEWAY_PORT": "0", "GATEWAY_ID": "bench",
                "TOKENIZERS_PARALLELISM": "false"})
    with ExitStack() as stack:
        endpoints = stack.enter_context(local_infra(log_dir / "infra", env))
        env.update(endpoints.env())
        procs, url = start_services(stack, env, log_dir, neighbours=list(endpoints.pids.values()),
                                    **({"cwd": checkout} if checkout else {}))
        pids = {service: proc.proc.pid for service, proc in procs.items()}
        notes = [line.split("services.worker.engine: ", 1)[-1].strip()
                 for service, proc in procs.items() if service.startswith("worker")
                 for line in open(proc.log_path, errors="replace") if "confined to CPUs" in line]
        if checkout:
            notes.append(f"services run from {checkout}")
        engines = [p.pid for p in engine_processes(
            proc.proc.pid for service, proc in procs.items() if service.startswith("worker"))]
        yield Running(name, url, {**pids, **endpoints.pids},
                      [pids["gateway"], *engines], [*notes, f"logs in {log_dir}"])


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # /health is the server's readiness check; its log lines vary by version
    raise RuntimeError(f"vllm serve not healthy after {timeout:.0f}s; see {log}")


@contextmanager
def vllm_serve(engine: EngineConfig, log_dir: Path) -> Iterator[Running]:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "vllm-serve.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(engine.model), "--served-model-name", engine.served_name,
           *engine.serve_flags(), "--host", "127.0.0.1", "--port", str(port),
           "--disable-uvicorn-access-log"]  # the gateway keeps no access log either
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **engine.env()}, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log, timeout=600)
        tamed = tame_children(proc.pid, engine.nice, engine.cpus)
        yield Running("vllm-serve", url, {"vllm-serve": proc.pid}, [proc.pid], [tamed, f"log {log}"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def paused(targets: list[Running]) -> Iterator[None]:
    """SIGSTOP the targets' pausable trees for the block (SIGCONT after, whatever happens),
    so a target idling beside the measured one takes no CPU from it."""
    procs = []
    for target in targets:
        for pid in target.pausable:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                pass
    for proc in procs:
        _signal(proc, signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            _signal(proc, signal.SIGCONT)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass
