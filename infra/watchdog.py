"""Nothing a launcher starts outlives it, however the launcher ends (even by SIGKILL).

Each child the launcher starts leads its own process group (its own children, such as
vLLM's engine processes, are in it too). The first `guard(pid)` starts a watchdog process
in a process group of its own, so a signal to the launcher's group does not reach it, and
tells it each group over a pipe. When the pipe closes, because the launcher exited or was
killed, the watchdog terminates every group still listed (SIGTERM, then SIGKILL), and
exits. A group the launcher stopped itself is taken off the list first (`forget`), so a
recycled process id is never signalled.

The watchdog belongs to the launcher process (one per process), so it is created on first
use rather than passed around.

    python -m infra.watchdog     # the watchdog itself; reads "+pgid" / "-pgid" lines
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_watchdog: subprocess.Popen | None = None
TERM_GRACE_S = 10.0


def _send(line: str) -> None:
    global _watchdog
    with _lock:
        if _watchdog is None or _watchdog.poll() is not None:
            _watchdog = subprocess.Popen(
                [sys.executable, "-m", "infra.watchdog"], stdin=subprocess.PIPE,
                process_group=0, cwd=Path(__file__).resolve().parents[1])
        assert _watchdog.stdin is not None
        _watchdog.stdin.write(f"{line}\n".encode())
        _watchdog.stdin.flush()


def guard(pgid: int) -> None:
    """Terminate process group `pgid` when this process ends, unless forgotten first."""
    _send(f"+{pgid}")


def forget(pgid: int) -> None:
    """The group is gone (stopped by the launcher): never signal that id."""
    _send(f"-{pgid}")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _terminate(groups: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + TERM_GRACE_S
        while time.monotonic() < deadline and any(_alive(g) for g in groups):
            time.sleep(0.1)  # other processes' exits: nothing to await on
        groups = [g for g in groups if _alive(g)]
        if not groups:
            return


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the launcher decides; its end is the signal
    groups: dict[int, None] = {}
    for raw in sys.stdin.buffer:
        line = raw.decode().strip()
        if line[:1] == "+" and line[1:].isdigit():
            groups[int(line[1:])] = None
        elif line[:1] == "-" and line[1:].isdigit():
            groups.pop(int(line[1:]), None)
    _terminate([g for g in groups if _alive(g)])


if __name__ == "__main__":
    main()
