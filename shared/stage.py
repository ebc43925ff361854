"""What the consumer-group stages between the gateway and the workers (preprocess, tokenizer)
share: run the group until told to stop, then drain; answer a failed request in its stream."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from shared.bus import Meta, Publisher
from shared.consumer import GroupRunner, NotSettled
from shared.errors import DeadlineExceeded, SluiceError, error_reply

log = logging.getLogger(__name__)


async def run_group(runner: GroupRunner, stop: asyncio.Event, drain_s: float) -> None:
    """Consume until `stop` is set (or the consume loop dies), then finish in-flight work."""
    run = asyncio.create_task(runner.run(), name="consume")
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    runner.stop()
    try:
        await run  # re-raises if the consume loop died
    finally:
        await runner.drain(drain_s)


def check_deadline(deadline: float | None) -> None:
    """A request nobody waits for any more gets a timeout error and no work."""
    if deadline is not None and time.time() >= deadline:
        raise DeadlineExceeded("the request's deadline passed before it was processed")


async def reply_error(publisher: Publisher, meta: Meta, exc: Exception, *, request_id: str,
                      source: str) -> None:
    """Send the client an ErrorReply for `exc` (a bug is logged, and reported as a 500).
    If Kafka does not store it, the request stays unsettled, to be answered on redelivery."""
    if not isinstance(exc, SluiceError):
        log.exception("request %s failed in %s", request_id, source, exc_info=exc)
    try:
        fut = await publisher.reply(meta, error_reply(exc, request_id=request_id, source=source, seq=0))
        if fut is not None:
            await fut
    except KafkaError as err:
        log.warning("request %s: its error reply was not stored (%s)", request_id, err)
        raise NotSettled(request_id) from err
