"""Abort events: every worker reads the whole abort topic (no group) from its end."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from shared.contracts import AbortRequest, Codec, DecodeErrors

log = logging.getLogger(__name__)


async def listen_for_aborts(consumer: AIOKafkaConsumer, on_abort: Callable[[str], Awaitable[None]],
                            set_aside: Callable[[object, str], Awaitable[None]]) -> None:
    codec = Codec(AbortRequest)
    while True:
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            for record in records:
                try:
                    msg = codec.decode(record.value)
                except DecodeErrors as exc:
                    await set_aside(record, repr(exc))
                    continue
                try:
                    await on_abort(msg.request_id)
                except Exception:
                    log.exception("abort of %s failed", msg.request_id)
