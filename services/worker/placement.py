"""CPU placement of vLLM's engine processes on a host they share (the cpu pool).

vLLM's CPU backend binds its executor's compute threads to some cores and leaves the rest
for "everything else", but its engine core's busy loop floats onto those cores too, where
it starves this worker's Kafka client, the broker and the gateway: replies then reach
clients in bursts. So the engine's processes go to the executor's cores and everything
else stays off those cores (`keep_off`).

Their niceness (WORKER_ENGINE_NICE) is 0 by default. A lower priority was measured to help
(a median 5% at concurrency 32) while each local service ran in a session of its own: with
the kernel's autogroup scheduling, niceness then only ranked the engine against its own
worker's threads. The launcher now keeps every process in the launcher's session (one CPU
share, see infra.procs.Child), where an engine at nice 10 loses its core to any process
that lands there, unpinned ones included (the load client, the launcher): tokens/s at
concurrency 32 fell by a quarter to a third against nice 0 (`make bench`'s c32 load,
medians of three rounds, one run of each setting: Sluice 1,192 against 1,540, vllm serve
with the same placement 1,461 against 2,052).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import psutil

log = logging.getLogger(__name__)


def engine_cores(spec: str, engine: list[psutil.Process]) -> set[int]:
    """The cores for the engine: "" none (leave it), "executor" the cores vLLM bound its
    executor to (the engine processes' narrowed masks), or a list like "0-3,8"."""
    if not spec:
        return set()
    if spec == "executor":
        everything = len(os.sched_getaffinity(0))
        masks = [set(os.sched_getaffinity(p.pid)) for p in engine]
        narrow = [m for m in masks if len(m) < everything]
        return set.union(*narrow) if narrow else set()
    cores: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def engine_processes(roots: Iterable[int]) -> list[psutil.Process]:
    """vLLM's engine processes (it titles them VLLM::...) among the roots' descendants."""
    found = []
    for pid in roots:
        try:
            found += [p for p in psutil.Process(pid).children(recursive=True)
                      if p.name().startswith("VLLM::")]
        except psutil.Error:
            pass
    return found


def keep_off(processes: Iterable[psutil.Process], cores: set[int]) -> set[int]:
    """Pin the processes to the cores other than `cores` (the engine's); returns those, or
    an empty set when there is nothing to do (no engine cores, or no core to spare)."""
    rest = set(os.sched_getaffinity(0)) - cores if cores else set()
    if rest:
        confine(processes, rest)
    return rest


def confine(processes: Iterable[psutil.Process], cores: set[int], nice: int = 0) -> None:
    """Renice the processes and pin every thread of theirs to `cores` (if any)."""
    for proc in processes:
        try:
            if nice:
                os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
            for thread in proc.threads() if cores else ():
                os.sched_setaffinity(thread.id, cores)
        except (psutil.Error, OSError) as exc:
            log.warning("could not place process %d: %s", proc.pid, exc)
