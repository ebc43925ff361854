"""Process lifecycle: run a service until SIGINT/SIGTERM, then let it shut down in order."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def run_until_signal(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `serve(stop)`; the first signal sets `stop`, a second one exits at once."""

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def _on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                log.warning("second %s: exiting now", sig.name)
                raise SystemExit(1)
            log.info("%s received: shutting down", sig.name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, sig)
        await serve(stop)

    with asyncio.Runner(loop_factory=loop_factory(os.environ.get("SLUICE_EVENT_LOOP", "uvloop"))) as runner:
        runner.run(_main())


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (the default) cuts the event loop's own cost per message and per socket write;
    "asyncio" keeps the standard loop."""
    if name == "asyncio":
        return None
    if name != "uvloop":
        raise ValueError(f"SLUICE_EVENT_LOOP must be uvloop or asyncio, got {name!r}")
    import uvloop

    return uvloop.new_event_loop


def freeze_heap() -> None:
    """After start-up: move every object made so far out of the collector's sight.

    The services import large libraries (vLLM, torch, transformers); full collections
    over those objects pause the event loop for tens of milliseconds, mid-stream.
    """
    gc.collect()
    gc.freeze()


def ready_line(service: str, detail: str = "") -> str:
    """The line a service logs once it serves; launchers and tests wait for it."""
    return f"SLUICE-READY {service} {detail}".rstrip()

