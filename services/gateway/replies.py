"""The reply path: one background consumer routes reply messages to per-request collectors.

Every stream's replies are on one partition of the shared reply topic (the request id says
which: shared.streamid). The gateway reads its home partitions (the ones it puts its own
requests on) with manual assignment, so the reply path never rebalances; streams resumed
from elsewhere are read by services.gateway.follower into the same kind of collector.

A Kafka error in the consume loop is retried with backoff (an outage is the health
monitor's to report: services.gateway.health); a bug fails every waiting stream and marks
the gateway unready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from shared.bus import Publisher
from shared.contracts import (Codec, DecodeErrors, ErrorReply, LogRecord, Reply, StreamOpened,
                              TokenDelta)
from shared.errors import (DeadlineExceeded, InternalError, RemoteError, SluiceError, Unavailable,
                           UpstreamTimeout)
from shared.sequence import ReplySequencer, Verdict

from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

RETRY_S = (0.5, 5.0)  # first and longest wait after a failed fetch


class Collector:
    """One stream's inbox. Messages pile up in a list and wake the reader, which takes
    everything that arrived at once: one wake-up per batch, not one queue item per token.
    Which messages belong to the stream (and in what order) is shared.sequence's call: a
    worker that took the request over continues it only where the stream stands.

    A resumed stream's collector also learns the stream's header (`opened`), when its last
    record was stored, and when its reader has caught up with the log (`caught_up`)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._items: list[TokenDelta] = []
        self._wake = asyncio.Event()
        self._error: SluiceError | None = None
        self._sequence = ReplySequencer()
        self.finished = False
        self.opened: StreamOpened | None = None
        self.ended_ms: int | None = None  # broker time of the final record
        # The message number of a stored error (a worker's ErrorReply). An error the gateway
        # made itself (Kafka away, a timeout, a gap) is not in the log: its event gets no id,
        # so a client resuming after it starts from its last delta.
        self.error_seq: int | None = None
        self.caught_up = asyncio.Event()

    @property
    def over(self) -> bool:
        return self.finished or self._error is not None

    @property
    def error(self) -> SluiceError | None:
        return self._error

    def record(self, msg: LogRecord, timestamp_ms: int) -> None:
        """A record of this stream, read from the log (a resumed stream)."""
        if isinstance(msg, StreamOpened):
            self.opened = self.opened or msg
            return
        was_over = self.over
        self.deliver(msg)
        if self.over and not was_over:
            self.ended_ms = timestamp_ms

    def deliver(self, msg: Reply) -> None:
        if self.over:
            return
        verdict = self._sequence.check(msg)
        if verdict in (Verdict.DUPLICATE, Verdict.STALE):
            # A resent message, a redelivered request run twice, or a worker taken over.
            self._metrics.duplicates.inc()
            return
        if verdict is Verdict.GAP:
            self._metrics.gaps.inc()
            self.fail(InternalError(f"{msg.seq - self._sequence.next_seq} reply message(s) were lost"))
            return
        if verdict is Verdict.DIVERGED:
            self._metrics.gaps.inc()
            self.fail(InternalError("two workers disagree about this stream after a failover"))
            return
        if msg.epoch > self._sequence.epoch and self._sequence.started:
            self._metrics.takeovers.inc()
        self._sequence.accept(msg)
        if isinstance(msg, ErrorReply):
            self.fail(RemoteError(msg.error), seq=msg.seq)
            return
        self._items.append(msg)
        self.finished = msg.finished
        self._wake.set()

    def fail(self, exc: SluiceError, seq: int | None = None) -> None:
        """End the stream with `exc`; `seq` is the error's own message number when the error
        is stored in the log."""
        if self._error is None and not self.finished:
            self._error = exc
            self.error_seq = seq
            self._wake.set()

    async def batches(self, idle_timeout_s: float,
                      deadline: float | None = None) -> AsyncIterator[list[TokenDelta]]:
        """Yield batches of deltas until the final one; raise the stream's error, if any.
        `deadline` (unix seconds) bounds the whole wait."""
        while True:
            if not self._items and self._error is None:
                wait = idle_timeout_s
                if deadline is not None:
                    wait = min(wait, deadline - time.time())
                try:
                    await asyncio.wait_for(self._wake.wait(), max(wait, 0))
                except TimeoutError:
                    if deadline is not None and time.time() >= deadline:
                        raise DeadlineExceeded("the request's deadline passed") from None
                    raise UpstreamTimeout(
                        f"no reply from the model for {idle_timeout_s:g} s") from None
            self._wake.clear()
            items, self._items = self._items, []
            if items:
                yield items
                if items[-1].finished:
                    return
            if self._error is not None:
                raise self._error


class ReplyRouter:
    def __init__(self, consumer: AIOKafkaConsumer, publisher: Publisher, deadletter_topic: str,
                 metrics: GatewayMetrics) -> None:
        self._consumer = consumer
        self._publisher = publisher
        self._deadletter = deadletter_topic
        self._metrics = metrics
        self._codec: Codec[LogRecord] = Codec(LogRecord)
        self._collectors: dict[str, Collector] = {}
        self.failure: SluiceError | None = None

    def open(self, request_id: str) -> Collector:
        if self.failure is not None:
            raise self.failure
        collector = self._collectors[request_id] = Collector(self._metrics)
        return collector

    def close(self, request_id: str) -> None:
        self._collectors.pop(request_id, None)

    def collectors(self) -> Iterable[Collector]:
        return self._collectors.values()

    async def run(self) -> None:
        delay = RETRY_S[0]
        try:
            while True:
                try:
                    batches = await self._consumer.getmany(timeout_ms=1000)
                except KafkaError as exc:
                    log.warning("reply fetch failed (%r); retrying in %gs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_S[1])
                    continue
                delay = RETRY_S[0]
                for records in batches.values():
                    for record in records:
                        await self._route(record)
        except asyncio.CancelledError:
            self._fail_all(Unavailable("the gateway is shutting down"))
            raise
        except Exception as exc:
            log.exception("reply consumer failed")
            self._fail_all(Unavailable(f"the reply stream failed: {type(exc).__name__}"))
            raise

    async def _route(self, record) -> None:
        try:
            msg = self._codec.decode(record.value)
        except DecodeErrors as exc:
            log.warning("invalid reply at %s:%d:%d (%r); dead-lettered", record.topic,
                        record.partition, record.offset, exc)
            self._metrics.dead_letters.inc()
            try:
                await self._publisher.dead_letter(self._deadletter, record, repr(exc), "gateway-replies")
            except KafkaError:
                log.exception("could not dead-letter a reply; dropped it")
            return
        if isinstance(msg, StreamOpened):
            return  # a stream's header: for resumes (services.gateway.follower)
        self._metrics.replies.inc()
        collector = self._collectors.get(msg.request_id)
        if collector is None:
            self._metrics.orphans.inc()  # the client left, another gateway's, or a late duplicate
            return
        collector.deliver(msg)

    def _fail_all(self, exc: SluiceError) -> None:
        self.failure = exc
        for collector in self._collectors.values():
            collector.fail(exc)
