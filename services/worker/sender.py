"""Sending one request's replies: only while its claim is ours (services.worker.ownership),
and knowing whether everything sent was stored. A reply Kafka did not store leaves a hole
after it: the request stops there and is handed over, so that whoever continues starts
from exactly what is stored."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.errors import KafkaError

from shared.bus import Meta, Publisher
from shared.contracts import StreamOpened

from services.worker.metrics import WorkerMetrics
from services.worker.ownership import Owned, Ownership, Stop

log = logging.getLogger(__name__)

DELIVERY_WAIT_S = 30.0  # how long a handoff waits for its last replies to be stored


class Sender:
    """Sends a request's replies while its claim is ours; knows whether all were stored."""

    def __init__(self, publisher: Publisher, ownership: Ownership, metrics: WorkerMetrics,
                 owned: Owned, meta: Meta, header: StreamOpened | None = None) -> None:
        self._publisher = publisher
        self._ownership = ownership
        self._metrics = metrics
        self._owned = owned
        # The stream's header, when this run starts the stream: it goes just ahead of the
        # first message, into the same batch (the same partition, queued back to back).
        self._header = header
        self._meta = meta
        self._last: asyncio.Future | None = None
        self.failed = False  # a reply was not queued or not stored: the stream may have a hole

    async def send(self, msg: Any) -> asyncio.Future | None:
        await self._ownership.confirm(self._owned)
        if self._header is not None:
            header, self._header = self._header, None
            await self._queue(header)
        fut = await self._queue(msg)
        self._metrics.messages.inc()
        return fut

    async def _queue(self, msg: Any) -> asyncio.Future | None:
        queued = time.perf_counter()
        try:
            fut = await self._publisher.reply(self._meta, msg)
        except KafkaError:
            self.failed = True
            raise
        if fut is not None:
            fut.add_done_callback(lambda f: self._delivered(f, queued))
            self._last = fut
        return fut

    def _delivered(self, fut: asyncio.Future, queued: float) -> None:
        """A reply Kafka did not store leaves a hole after it: stop here and release the
        claim, so that whoever continues starts from what is stored."""
        if not fut.cancelled() and fut.exception() is None:
            self._metrics.reply_ack.observe(time.perf_counter() - queued)
            return
        if not self.failed:
            log.warning("request %s: a reply was not stored (%r); handing it over",
                        self._owned.request_id, None if fut.cancelled() else fut.exception())
        self.failed = True
        self._owned.halt(Stop.HANDOFF)

    async def stored(self) -> bool:
        """True once everything sent is acknowledged (replies of a request share a partition
        and are acknowledged in order, so the last acknowledgement covers them all)."""
        if self.failed:
            return False
        if self._last is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._last), DELIVERY_WAIT_S)
            return True
        except (KafkaError, TimeoutError) as exc:
            log.warning("request %s: a reply was not stored (%s)", self._owned.request_id, exc)
            self.failed = True
            return False
