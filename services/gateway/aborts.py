"""Publishing aborts for requests whose client went away, off the cancelled handler's task."""

from __future__ import annotations

import asyncio
import logging

from shared.bus import Meta, Publisher
from shared.claims import AbortMarks
from shared.contracts import AbortRequest
from shared.redisconn import level

from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class Aborter:
    def __init__(self, publisher: Publisher, marks: AbortMarks, topic: str,
                 metrics: GatewayMetrics, keep_ms: int) -> None:
        self._publisher = publisher
        self._marks = marks
        self._keep_ms = keep_ms  # as long as the request may live
        self._topic = topic
        self._metrics = metrics
        self._tasks: set[asyncio.Task] = set()

    def abort(self, request_id: str, reason: str) -> None:
        """Fire and forget: the caller is being cancelled and must not await."""
        task = asyncio.create_task(self._publish(request_id, reason), name=f"abort-{request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, request_id: str, reason: str) -> None:
        try:
            # Mark first: a request still on its way to a worker is skipped there.
            await asyncio.wait_for(self._marks.mark(request_id, self._keep_ms), 1.0)
        except Exception as exc:
            log.log(level(exc), "could not mark the abort of %s in Redis: %s", request_id, exc)
        try:
            await self._publisher.send_and_wait(
                self._topic, AbortRequest(request_id=request_id, reason=reason), Meta(request_id))
            self._metrics.aborts.inc()
        except Exception:
            log.exception("could not publish the abort of %s", request_id)

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
