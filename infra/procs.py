"""Run a Sluice service as a child process and wait for its ready line (no polling)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

READY = "SLUICE-READY"


class ServiceProcess:
    """A service's process; its output goes to a log file and is watched for the ready line."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_path: Path,
                 echo: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self.ready_detail = ""
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._echo = echo
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=Path(__file__).resolve().parents[1],
        )
        self._reader = threading.Thread(target=self._pump, name=f"{name}-log", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if self._echo:
                    sys.stdout.buffer.write(f"[{self.name}] ".encode() + line)
                    sys.stdout.flush()
                text = line.decode(errors="replace")
                if not self._ready.is_set() and READY in text:
                    self.ready_detail = text.split(READY, 1)[1].strip()
                    self._ready.set()
        self._exited.set()
        self._ready.set()  # wake a waiter: it checks whether we exited

    def wait_ready(self, timeout: float) -> str:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")
        if self._exited.is_set() and not self.ready_detail:
            raise RuntimeError(f"{self.name} exited ({self.proc.wait()}) before it was ready; "
                               f"see {self.log_path}")
        return self.ready_detail

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait()
        finally:
            self._reader.join(5)


def detail(ready_detail: str, key: str) -> str:
    """A value from the ready line, e.g. detail(line, 'url')."""
    for item in ready_detail.split():
        k, _, v = item.partition("=")
        if k == key:
            return v
    raise KeyError(key)


def plan(env: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
    """The processes of a whole stack, in start order (they stop in reverse): a worker per
    served model, preprocess if a model takes images, the tokenizer and the gateway.
    Name → (module, extra environment)."""
    from shared.settings import ModelCatalog

    catalog = ModelCatalog.from_env(env)
    procs: dict[str, tuple[str, dict[str, str]]] = {}
    for spec in catalog.models:
        procs[f"worker-{spec.route}"] = ("services.worker", {"WORKER_MODEL": spec.name})
    if any(spec.vision is not None for spec in catalog.models):
        procs["preprocess"] = ("services.preprocess", {})
    procs["tokenizer"] = ("services.tokenizer", {})
    procs["gateway"] = ("services.gateway", {})
    return procs


def start_services(stack: ExitStack, env: dict[str, str], log_dir: Path, *, echo: bool = False,
                   neighbours: Sequence[int] = ()) -> tuple[dict[str, ServiceProcess], str]:
    """Start every service, wait until each is ready; returns them and the gateway's URL.
    `stack` stops them (gateway first) when it unwinds. Then, on one host, everything but
    vLLM's CPU engines (the services and `neighbours`, e.g. a local Kafka and Redis) is
    kept off the engines' cores; SLUICE_PIN_SERVICES=0 leaves placement to the kernel."""
    procs: dict[str, ServiceProcess] = {}
    for name, (module, extra) in plan(env).items():
        procs[name] = ServiceProcess(name, module, {**env, **extra}, log_dir / f"{name}.log", echo=echo)
        stack.callback(lambda name=name: procs[name].stop())  # whichever process holds the name then
    for proc in procs.values():
        proc.wait_ready(timeout=600)  # the worker's engine start dominates
    if env.get("SLUICE_PIN_SERVICES", "1") != "0":
        keep_off_engine_cores([p.proc.pid for p in procs.values()], neighbours)
    return procs, detail(procs["gateway"].ready_detail, "url")


def keep_off_engine_cores(services: Sequence[int], neighbours: Sequence[int] = ()) -> set[int]:
    """Pin the services' processes (all but vLLM's engine processes) and the neighbours to
    the cores the engines were not confined to (see services.worker.placement). Returns
    those cores (empty: nothing done)."""
    import psutil

    from services.worker.placement import engine_cores, engine_processes, keep_off

    engines = engine_processes(services)
    cores = engine_cores("executor", engines)
    engine_pids = {p.pid for p in engines}
    others = []
    for pid in (*services, *neighbours):
        try:
            root = psutil.Process(pid)
            others += [p for p in (root, *root.children(recursive=True)) if p.pid not in engine_pids]
        except psutil.Error:
            pass
    return keep_off(others, cores)
