"""Peak resident memory and CPU use of named process trees, sampled in a background thread.

Each named root (a service) is sampled with all its descendants, because vLLM does its
work in child processes (EngineCore, its executor Worker). `window()` collects, for one
measured interval (one load): the peak RSS per process and per tree, and each tree's CPU
use (percent of one core, from the processes' CPU times at the window's ends), and the
whole machine's, so CPU taken by anything outside the benchmark shows.

RSS counts shared pages in every process that maps them, so a tree's total is an upper
bound of what the tree really uses; the per-process figures are exact RSS peaks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

MIB = 1 << 20
MACHINE = "(machine)"  # every process on the host, ours or not, in the CPU figures
BUSY_PCT = 25.0  # CPU (% of one core) other processes may use before a figure is suspect


def _machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) \
        + getattr(t, "steal", 0.0)


@dataclass
class Window:
    """Largest RSS seen, in MiB: per tree (sum over its processes at one instant) and per
    process (keyed "<service>/<process name>"); CPU use per tree in % of one core."""

    trees: dict[str, float] = field(default_factory=dict)
    processes: dict[str, float] = field(default_factory=dict)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    # (CLOCK_MONOTONIC, {service: CPU seconds of its live processes}) at every sample
    timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU use (% of one core) per tree between two CLOCK_MONOTONIC times, from the
        samples nearest inside them (the sampling interval bounds the error)."""
        inside = [(t, cpu) for t, cpu in self.timeline if start <= t <= end]
        out: dict[str, float] = {}
        for service in dict.fromkeys(k for _, cpu in inside for k in cpu):
            seen = [(t, cpu[service]) for t, cpu in inside if service in cpu]
            if len(seen) >= 2 and seen[-1][0] > seen[0][0]:
                out[service] = 100.0 * (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
        return out

    def as_json(self) -> dict:
        return {"trees_mib": {k: round(v, 1) for k, v in self.trees.items()},
                "processes_mib": {k: round(v, 1) for k, v in self.processes.items()},
                "cpu_pct": {k: round(v, 1) for k, v in self.cpu_pct.items()}}


def outside_cpu(cpu_pct: dict[str, float] | None) -> float | None:
    """CPU (% of one core) the rest of the machine used: every process minus the watched."""
    if not cpu_pct or MACHINE not in cpu_pct:
        return None
    return max(cpu_pct[MACHINE] - sum(v for k, v in cpu_pct.items() if k != MACHINE), 0.0)


def _role(proc: psutil.Process) -> str:
    """A stable name for a process: vLLM titles its children (e.g. VLLM::EngineCore)."""
    try:
        name = proc.name()
        cmd = proc.cmdline()
    except psutil.Error:
        return "gone"
    if name.startswith("VLLM::") or not cmd:
        return name
    if name.startswith("python") and "-m" in cmd[:-1]:
        return cmd[cmd.index("-m") + 1]  # "python -m services.worker" → "services.worker"
    return name


def _tree(root: tuple[int, bool]) -> list[psutil.Process]:
    pid, children = root
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)] if children else [proc]
    except psutil.Error:
        return []


def _cpu_seconds(root: tuple[int, bool]) -> dict[int, float]:
    out = {}
    for proc in _tree(root):
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


class ProcessSampler:
    """Samples every registered tree every `interval_s` until closed."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self._interval = interval_s
        self._roots: dict[str, tuple[int, bool]] = {}  # service → (pid, with children)
        self._windows: list[Window] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._thread.start()

    def watch(self, service: str, pid: int, children: bool = True) -> None:
        with self._lock:
            self._roots[service] = (pid, children)

    def forget(self, service: str) -> None:
        with self._lock:
            self._roots.pop(service, None)

    def forget_all(self) -> None:
        with self._lock:
            self._roots.clear()

    @contextmanager
    def window(self) -> Iterator[Window]:
        """What the registered trees did while the block ran."""
        win = Window()
        with self._lock:
            self._windows.append(win)
            roots = dict(self._roots)
        cpu0 = {service: _cpu_seconds(root) for service, root in roots.items()}
        machine0 = _machine_busy_seconds()
        t0 = time.monotonic()
        self.sample()
        try:
            yield win
        finally:
            self.sample()
            elapsed = time.monotonic() - t0
            for service, root in roots.items():
                before, after = cpu0[service], _cpu_seconds(root)
                # Processes alive at both ends; one started meanwhile counts from zero.
                used = sum(sec - before.get(p, 0.0) for p, sec in after.items())
                win.cpu_pct[service] = 100.0 * used / elapsed if elapsed > 0 else 0.0
            if elapsed > 0:
                win.cpu_pct[MACHINE] = 100.0 * (_machine_busy_seconds() - machine0) / elapsed
            with self._lock:
                self._windows.remove(win)

    def sample(self) -> None:
        with self._lock:
            roots = dict(self._roots)
        seen: dict[str, tuple[float, dict[str, float]]] = {}
        cpu: dict[str, float] = {}
        for service, root in roots.items():
            total, procs, used = 0.0, {}, 0.0
            for proc in _tree(root):
                try:
                    rss = proc.memory_info().rss / MIB
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                total += rss
                used += t.user + t.system
                key = f"{service}/{_role(proc)}"
                procs[key] = max(procs.get(key, 0.0), rss)
            if procs:
                seen[service] = (total, procs)
                cpu[service] = used
        cpu[MACHINE] = _machine_busy_seconds()
        now = time.monotonic()
        with self._lock:
            for win in self._windows:
                win.timeline.append((now, cpu))
                for service, (total, procs) in seen.items():
                    win.trees[service] = max(win.trees.get(service, 0.0), total)
                    for key, rss in procs.items():
                        win.processes[key] = max(win.processes.get(key, 0.0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
