"""Abort events: every worker reads the whole abort topic (no group) from its end. A Kafka
error is retried with backoff, so the listener outlives an outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from shared.consumer import RETRY_S
from shared.contracts import AbortRequest, Codec, DecodeErrors

log = logging.getLogger(__name__)


async def listen_for_aborts(consumer: AIOKafkaConsumer, on_abort: Callable[[str], Awaitable[None]],
                            set_aside: Callable[[object, str], Awaitable[None]]) -> None:
    codec = Codec(AbortRequest)
    delay = RETRY_S[0]
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=1000)
        except KafkaError as exc:
            log.warning("abort fetch failed (%r); retrying in %gs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_S[1])
            continue
        delay = RETRY_S[0]
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
