"""CPU placement on a host the engine shares with other processes (a CPU pool, or any
single machine running the whole stack).

vLLM's CPU backend binds its executor's compute threads to some cores and leaves the rest
for "everything else". Its engine processes busy-poll; anything else scheduled on those
cores (Kafka, the services, this worker's own Kafka client) is time taken from the engine,
and the engine's busy loop on the other cores starves them in turn. So: the engine's
processes on the executor's cores (lower priority, so a front end that must run there
still can), and everything else off them.
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


def keep_off(cores: set[int], processes: Iterable[psutil.Process]) -> set[int]:
    """Move the processes (every thread; later threads inherit it) to the cores not in
    `cores`. Returns the cores they now run on (empty: nothing was left, nothing moved)."""
    rest = set(range(psutil.cpu_count() or 1)) - cores if cores else set()
    if rest:
        confine(processes, rest)
    return rest
