"""What the consumer-group stages between the gateway and the workers (preprocess, tokenizer)
share: run the group until told to stop, then drain; answer a failed request in its stream."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from shared.bus import Meta, Publisher, transient
from shared.consumer import GroupRunner, NotSettled
from shared.contracts import Wire
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


RETRY_S = (0.5, 5.0)  # first and longest wait between sends while the broker is unavailable
RETRY_WITHOUT_DEADLINE_S = 300.0


async def forward(publisher: Publisher, topic: str, msg: Wire, meta: Meta, *,
                  partition: int | None = None, deadline: float | None = None) -> None:
    """Send and wait until Kafka stores it. While the broker is unavailable, retry with
    backoff until the request's deadline (a message that cannot be stored raises at once)."""
    until = deadline if deadline is not None else time.time() + RETRY_WITHOUT_DEADLINE_S
    delay = RETRY_S[0]
    while True:
        try:
            await publisher.send_and_wait(topic, msg, meta, partition=partition)
            return
        except KafkaError as exc:
            if not transient(exc) or time.time() + delay >= until:
                raise
            log.warning("request %s: Kafka unavailable (%s); retrying in %gs", meta.request_id,
                        type(exc).__name__, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_S[1])


async def reply_error(publisher: Publisher, meta: Meta, exc: Exception, *, request_id: str,
                      source: str, deadline: float | None = None) -> None:
    """Send the client an ErrorReply for `exc` (a bug is logged, and reported as a 500).
    If Kafka does not store it in time, the request stays unsettled (its offset is not
    committed), to be answered when it is delivered again."""
    if not isinstance(exc, SluiceError):
        log.exception("request %s failed in %s", request_id, source, exc_info=exc)
    if meta.reply_to is None:
        log.warning("request %s has no reply address; dropping its error", request_id)
        return
    reply = error_reply(exc, request_id=request_id, source=source, seq=0)
    try:
        await forward(publisher, meta.reply_to.topic, reply, meta,
                      partition=meta.reply_to.partition, deadline=deadline)
    except KafkaError as err:
        log.warning("request %s: its error reply was not stored (%s)", request_id, err)
        raise NotSettled(request_id) from err
