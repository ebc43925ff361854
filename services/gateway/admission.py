"""Admission at the edge: refuse fast (429/503 with Retry-After) instead of queueing without bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.cache import WorkerRegistry
from shared.errors import Overloaded, Unavailable
from shared.redisconn import REDIS_ERRORS

from services.gateway.health import KafkaHealth
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, max_in_flight: int, workers: WorkerRegistry, kafka: KafkaHealth,
                 metrics: GatewayMetrics, live_cache_s: float = 1.0) -> None:
        self._max = max_in_flight
        self._workers = workers
        self._kafka = kafka
        self._metrics = metrics
        self._live_cache_s = live_cache_s
        self._live_until: dict[str, float] = {}  # model route → time a positive check stays valid
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        self.closing = False

    async def model_state(self, route: str) -> str:
        """"ready" (a live worker), "unavailable" (none), or "unknown" (Redis unreachable, or
        its registry too young to tell: it restarted empty)."""
        # Only positive answers are cached: a worker that just started is seen at once.
        now = time.monotonic()
        if self._live_until.get(route, 0.0) > now:
            return "ready"
        try:
            live = await self._workers.live(route)  # waits REDIS_TIMEOUT_S at most
        except REDIS_ERRORS as exc:
            log.debug("worker registry unavailable: %s", exc)
            return "unknown"
        if live is None:
            return "unknown"
        if live > 0:
            self._live_until[route] = now + self._live_cache_s
            return "ready"
        return "unavailable"

    async def workers_alive(self, route: str) -> bool:
        # Liveness is unknown without Redis; the Kafka path still works, so let it through.
        return await self.model_state(route) != "unavailable"

    @asynccontextmanager
    async def admit(self, route: str | None) -> AsyncIterator[None]:
        """A new generation for the model `route`, or (None) a resumed stream."""
        if self.closing:
            raise Unavailable("the gateway is shutting down", retry_after=1)
        if self.in_flight >= self._max:
            raise Overloaded("too many requests in flight; retry shortly", retry_after=1)
        self._kafka.check()
        if route is not None and not await self.workers_alive(route):
            raise Unavailable(f"no inference worker is serving {route}", retry_after=5)
        self.in_flight += 1
        self._metrics.in_flight.inc()
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._metrics.in_flight.dec()
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting; wait for in-flight requests. True if all finished in time."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
