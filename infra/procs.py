"""Child processes of a launcher (make up, the tests, the benchmarks): the services, each
watched for its ready line (no polling), and the local Kafka and Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from infra import watchdog

READY = "SLUICE-READY"
ROOT = Path(__file__).resolve().parents[1]


class Child:
    """A process the launcher started. It leads its own process group, so a signal reaches
    its children too (vLLM's engine processes), and the watchdog (infra.watchdog) ends the
    group if the launcher dies first. `respawn` starts it again, the same way.

    A process group, not a session: with the kernel's autogroup scheduling each session
    gets its own share of the CPU, which makes the engines' niceness meaningless across
    processes (a second worker's engine starting next to a running one got no CPU at all
    for minutes)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.cwd = cwd  # the checkout it runs from (another one: an A/B benchmark)
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.started = time.monotonic()
        self._exited = threading.Event()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            process_group=0, cwd=cwd)
        watchdog.guard(self.proc.pid)
        self._reader = threading.Thread(target=self._pump, name=f"{name}-log", daemon=True)
        self._reader.start()

    def respawn(self) -> Child:
        return type(self)(self.name, self.argv, self.env, self.log_path, self.cwd)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self._line(line)
        self._exited.set()
        self._line(None)

    def _line(self, line: bytes | None) -> None:
        """Each line of output as it comes (None at the end)."""

    def wait_ready(self, timeout: float) -> str:
        return ""

    def signal(self, sig: int) -> None:
        """To the process only, as an orchestrator signals a container's main process: it
        stops its own children (a worker drains, then shuts its engine down)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then after `timeout` SIGKILL for the whole group (a worker's drain is
        SLUICE_DRAIN_S, 20 s by default, plus its handoffs)."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.reap()
            return self.proc.wait()
        finally:
            self.reap()
            watchdog.forget(self.proc.pid)
            self._reader.join(5)

    def reap(self) -> None:
        """Kill its whole group: what is left of it once the process exited (an engine)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class PortProcess(Child):
    """A server (Kafka, Redis) that is ready once its port accepts connections."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 port: int) -> None:
        self.port = port
        super().__init__(name, argv, env, log_path)

    def respawn(self) -> PortProcess:
        return PortProcess(self.name, self.argv, self.env, self.log_path, self.port)

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return f"port={self.port}"
            except OSError:
                time.sleep(0.1)  # a server we started is coming up; nothing to await on
        raise RuntimeError(f"{self.name} did not open port {self.port} within {timeout:.0f}s; "
                           f"see {self.log_path}")


class ServiceProcess(Child):
    """A Sluice service (`python -m <module>`); ready once it logs its ready line."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_path: Path,
                 echo: bool = False, cwd: Path = ROOT) -> None:
        self.module = module
        self.ready_detail = ""
        self._ready = threading.Event()
        self._echo = echo
        super().__init__(name, [sys.executable, "-m", module], env, log_path, cwd)

    def respawn(self) -> ServiceProcess:
        return ServiceProcess(self.name, self.module, self.env, self.log_path, self._echo, self.cwd)

    def _line(self, line: bytes | None) -> None:
        if line is None:
            self._ready.set()  # wake a waiter: it checks whether we exited
            return
        if self._echo:
            sys.stdout.buffer.write(f"[{self.name}] ".encode() + line)
            sys.stdout.flush()
        if not self._ready.is_set() and READY.encode() in line:
            self.ready_detail = line.decode(errors="replace").split(READY, 1)[1].strip()
            self._ready.set()

    def wait_ready(self, timeout: float) -> str:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")
        if self._exited.is_set() and not self.ready_detail:
            raise RuntimeError(f"{self.name} exited ({self.proc.wait()}) before it was ready; "
                               f"see {self.log_path}")
        return self.ready_detail


def detail(ready_detail: str, key: str) -> str:
    """A value from the ready line, e.g. detail(line, 'url')."""
    for item in ready_detail.split():
        k, _, v = item.partition("=")
        if k == key:
            return v
    raise KeyError(key)


def plan(env: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
    """The processes of a whole stack, in start order (they stop in reverse): a worker per
    served model, preprocess if a model takes images, the tokenizer and the gateways
    (SLUICE_GATEWAYS, 1 by default: `gateway`, then `gateway-1`…, on consecutive ports from
    GATEWAY_PORT, with the ids `<GATEWAY_ID or gw>-<i>`, so each reads its own reply
    partition). Name → (module, extra environment)."""
    from shared.settings import ModelCatalog

    catalog = ModelCatalog.from_env(env)
    procs: dict[str, tuple[str, dict[str, str]]] = {}
    for spec in catalog.models:
        procs[f"worker-{spec.route}"] = ("services.worker", {"WORKER_MODEL": spec.name})
    if any(spec.vision is not None for spec in catalog.models):
        procs["preprocess"] = ("services.preprocess", {})
    procs["tokenizer"] = ("services.tokenizer", {})
    count = int(env.get("SLUICE_GATEWAYS") or "1")
    if count < 1:
        raise ValueError(f"SLUICE_GATEWAYS must be at least 1, got {count}")
    port = int(env.get("GATEWAY_PORT") or "8000")
    base_id = env.get("GATEWAY_ID") or "gw"
    for i in range(count):
        procs["gateway" if i == 0 else f"gateway-{i}"] = ("services.gateway", {
            "GATEWAY_PORT": str(port + i if port else 0), "GATEWAY_ID": f"{base_id}-{i}"})
    return procs


def gateway_urls(procs: dict[str, ServiceProcess]) -> list[str]:
    """Every gateway's URL, the first one first."""
    return [detail(p.ready_detail, "url") for name, p in procs.items()
            if name == "gateway" or name.startswith("gateway-")]


def start_services(stack: ExitStack, env: dict[str, str], log_dir: Path, *, echo: bool = False,
                   cwd: Path = ROOT,
                   neighbours: Sequence[int] = ()) -> tuple[dict[str, ServiceProcess], str]:
    """Start every service, wait until each is ready; returns them and the gateway's URL.
    `stack` stops them (gateway first) when it unwinds. Then, on one host, everything but
    vLLM's CPU engines (the services and `neighbours`, e.g. a local Kafka and Redis) is
    kept off the engines' cores; SLUICE_PIN_SERVICES=0 leaves placement to the kernel."""
    procs: dict[str, ServiceProcess] = {}
    for name, (module, extra) in plan(env).items():
        procs[name] = ServiceProcess(name, module, {**env, **extra}, log_dir / f"{name}.log",
                                     echo=echo, cwd=cwd)
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
