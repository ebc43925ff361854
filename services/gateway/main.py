from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from shared.lifecycle import freeze_heap, ready_line, run_until_signal
from shared.telemetry import setup_logging

from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings

log = logging.getLogger("services.gateway")


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    # handler_cancellation: a client that disconnects cancels its handler, which
    # publishes the abort. No polling for disconnects.
    # The app's on_shutdown drain already waited for in-flight requests (SLUICE_DRAIN_S);
    # whatever still runs after that is cancelled promptly, which publishes its abort.
    runner = web.AppRunner(build_app(settings), handler_cancellation=True, access_log=None,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        freeze_heap()
        log.info(ready_line("gateway", f"url=http://{settings.host}:{port}"))
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    setup_logging("gateway")
    settings = GatewaySettings.from_env()
    run_until_signal(lambda stop: serve(settings, stop))
