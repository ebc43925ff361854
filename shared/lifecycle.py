"""Process lifecycle: run a service until SIGINT/SIGTERM, then let it shut down in order."""

from __future__ import annotations

import asyncio
import gc
import logging
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

    asyncio.run(_main())


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

