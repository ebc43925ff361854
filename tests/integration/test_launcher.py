"""The launcher's supervision and clean-up, on real processes: a process that exits is
restarted with backoff, and nothing a launcher started outlives it, even when the launcher
is killed with SIGKILL (its children lead their own process groups; the watchdog ends them).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from infra.procs import Child
from infra.supervise import Supervisor


def sleeper(tmp_path: Path, name: str) -> Child:
    # A process with a child of its own, as a worker has its engine processes.
    script = "import subprocess, time; subprocess.Popen(['sleep', '600']); time.sleep(600)"
    return Child(name, [sys.executable, "-c", script], dict(os.environ), tmp_path / f"{name}.log")


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def test_a_process_that_exits_is_restarted_and_its_leftovers_reaped(tmp_path):
    units = {"svc": sleeper(tmp_path, "svc")}
    lines: list[str] = []
    supervisor = Supervisor([units], log=lines.append, check_s=0.05).start()
    try:
        first = units["svc"]
        deadline = time.monotonic() + 5
        while len(group_members(first.proc.pid)) < 2:  # its own child started
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(first.proc.pid, signal.SIGKILL)  # the leader only; its child is left over
        second = supervisor.wait_restarted("svc", first, timeout=10)
        assert second.proc.pid != first.proc.pid and second.proc.poll() is None
        assert group_members(first.proc.pid) == [], "the dead process's child outlived it"
        assert "svc exited with -9" in lines[0] and "restarting in 1s" in lines[0]
        assert supervisor.restarts == {"svc": 1}
    finally:
        supervisor.stop()
        units["svc"].stop()


def test_nothing_outlives_a_launcher_killed_with_sigkill(tmp_path):
    launcher = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from infra.procs import Child
        kids = [Child(f"k{{i}}", [sys.executable, "-c",
                "import subprocess, time; subprocess.Popen(['sleep', '600']); time.sleep(600)"],
                dict(os.environ), Path({str(tmp_path)!r}) / f"k{{i}}.log") for i in range(3)]
        print(" ".join(str(k.proc.pid) for k in kids), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    groups: list[int] = []
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the launcher printed nothing"
        groups = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(groups) == 3
        deadline = time.monotonic() + 10
        while sum(len(group_members(g)) for g in groups) < 6:  # each with its own child
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's whole group, as when `make` is killed
        proc.wait(5)
        deadline = time.monotonic() + 20
        while any(group_members(g) for g in groups):
            assert time.monotonic() < deadline, "processes outlived their launcher"
            time.sleep(0.1)  # the watchdog's work in another process: nothing to await on
    finally:
        for g in [*groups, proc.pid]:  # the launcher too, should the test fail before its kill
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(5)
