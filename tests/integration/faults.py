"""Fault injection on the test stack's real processes: kill one and keep it down, pause one,
and bring it back the way the supervisor would (same command, same port, same storage)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from infra import watchdog
from infra.procs import Child
from tests.integration.conftest import Stack


def table(stack: Stack, name: str) -> dict[str, Child]:
    return stack.infra if name in stack.infra else stack.procs  # type: ignore[return-value]


@asynccontextmanager
async def down(stack: Stack, name: str) -> AsyncIterator[float]:
    """SIGKILL `name` and keep it down (the supervisor holds off) until the block ends; then
    start it again and wait until it is ready. Yields the time of the kill (monotonic)."""
    units = table(stack, name)
    stack.supervisor.hold(name)
    victim = units[name]
    victim.proc.kill()
    killed = time.monotonic()
    await asyncio.to_thread(victim.proc.wait, 30)
    try:
        yield killed
    finally:
        victim.reap()
        watchdog.forget(victim.proc.pid)
        fresh = victim.respawn()
        units[name] = fresh
        try:
            await asyncio.to_thread(fresh.wait_ready, 240)
        finally:
            stack.supervisor.release(name)


@asynccontextmanager
async def paused(stack: Stack, name: str) -> AsyncIterator[float]:
    """SIGSTOP `name` for the length of the block (SIGCONT after, whatever happens)."""
    unit = table(stack, name)[name]
    unit.proc.send_signal(signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        unit.proc.send_signal(signal.SIGCONT)


def pids(stack: Stack) -> dict[str, int]:
    """Every service's process id: the same after a fault means nothing needed a restart."""
    return {name: proc.proc.pid for name, proc in stack.procs.items()}
