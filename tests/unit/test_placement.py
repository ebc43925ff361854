"""Engine placement on a shared host: everything but the engine goes to the cores the
engine was not confined to, and nothing happens when there is no core to spare."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from services.worker.placement import keep_off

CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


@pytest.mark.skipif(len(CORES) < 2, reason="needs two usable cores to split")
def test_moves_processes_off_the_engine_cores(child) -> None:
    engine = {CORES[0]}
    assert keep_off([child], engine) == set(CORES[1:])
    assert set(os.sched_getaffinity(child.pid)) == set(CORES[1:])


def test_leaves_placement_alone_without_engine_cores_or_a_core_to_spare(child) -> None:
    before = os.sched_getaffinity(child.pid)
    assert keep_off([child], set()) == set()
    assert keep_off([child], set(CORES)) == set()
    assert os.sched_getaffinity(child.pid) == before
