"""Keep a local stack's processes running, as compose's `restart:` or Kubernetes would.

A process that exits when nobody asked it to is started again after a backoff (1 s,
doubling up to 30 s; back to 1 s once it has run for a minute), and each exit and restart
is logged. The supervisor watches the launcher's own tables of processes (name → process):
a restart replaces the entry, so whoever looks a name up there gets the current process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping, Sequence

from infra import watchdog
from infra.procs import Child

BACKOFF_S = (1.0, 30.0)  # first delay, longest delay
STABLE_S = 60.0  # a process up this long gets the first delay again on its next exit


class Supervisor:
    def __init__(self, tables: Sequence[MutableMapping[str, Child]],
                 log: Callable[[str], None] = print, *, check_s: float = 0.2) -> None:
        self._tables = tables
        self._log = log
        self._check_s = check_s
        self._backoff: dict[str, float] = {}
        self._due: dict[str, float] = {}  # name → when its restart is due
        self._held: set[str] = set()  # names the launcher stops or restarts itself
        self.restarts: dict[str, int] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising (before the launcher stops the processes)."""
        self._stop.set()
        self._thread.join(5)

    def hold(self, name: str) -> None:
        """Leave `name` alone: the launcher stops or replaces it itself."""
        with self._changed:
            self._held.add(name)
            self._due.pop(name, None)

    def release(self, name: str) -> None:
        with self._changed:
            self._held.discard(name)

    def wait_restarted(self, name: str, after: Child, timeout: float) -> Child:
        """The process that replaced `after`, once it is ready."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not self._changed.wait_for(lambda: self._table(name)[name] is not after,
                                          max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"{name} was not restarted within {timeout:.0f}s")
            unit = self._table(name)[name]
        unit.wait_ready(max(deadline - time.monotonic(), 1))
        return unit

    def _table(self, name: str) -> MutableMapping[str, Child]:
        return next(t for t in self._tables if name in t)

    def _run(self) -> None:
        while not self._stop.wait(self._check_s):
            for name in [n for t in self._tables for n in list(t)]:
                self._check(name)

    def _check(self, name: str) -> None:
        with self._changed:
            table = self._table(name)
            unit = table[name]
            if name in self._held or unit.proc.poll() is None:
                return
            now = time.monotonic()
            due = self._due.get(name)
            if due is None:
                unit.reap()  # what is left of its process group (a vLLM engine, say) goes too
                watchdog.forget(unit.proc.pid)
                ran = now - unit.started
                delay = BACKOFF_S[0] if ran >= STABLE_S else self._backoff.get(name, BACKOFF_S[0])
                self._backoff[name] = min(delay * 2, BACKOFF_S[1])
                self._due[name] = now + delay
                self._log(f"{name} exited with {unit.proc.returncode} after {ran:.1f}s; "
                          f"restarting in {delay:g}s (see {unit.log_path})")
                return
            if now < due:
                return
            del self._due[name]
            try:
                table[name] = unit.respawn()
            except OSError as exc:
                self._log(f"could not restart {name}: {exc}")
                self._due[name] = now + self._backoff[name]
                return
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self._log(f"{name} restarted (restart {self.restarts[name]})")
            self._changed.notify_all()
