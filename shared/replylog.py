"""Reading back the durable log: a request's replies so far, and a record at a known offset.

The reply topics are the durable record of every stream: what a client can have received
is exactly what is in them (a reader only sees acknowledged records). A worker that takes
over a request replays them through the same sequencer the gateway uses
(shared.sequence), so it continues where any reader of the stream stands.

A request's replies are found from its creation time (Kafka's offsets-for-times index on
the reply partition, less a margin for clock skew between hosts), then filtered by key.
Several requests on one partition are read in one pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.bus import ReplyTo
from shared.contracts import Codec, DecodeErrors, ErrorReply, FinishReason, LogRecord, StreamOpened
from shared.sequence import ReplySequencer, Verdict

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ChoiceProgress:
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class StreamProgress:
    """A request's stream as the log holds it: what a takeover continues from."""

    request_id: str
    sequencer: ReplySequencer = field(default_factory=ReplySequencer)
    choices: dict[int, ChoiceProgress] = field(default_factory=dict)
    finished: bool = False  # a final delta or an error reply is stored
    diverged: bool = False  # the log holds a takeover that did not fit (should not happen)
    last_ms: int = 0  # when its last reply was stored (the broker's clock)

    @property
    def next_seq(self) -> int:
        return self.sequencer.next_seq

    @property
    def epoch(self) -> int:
        return self.sequencer.epoch

    @property
    def started(self) -> bool:
        return self.sequencer.started

    def moved_within(self, seconds: float) -> bool:
        """Whether a reply of it was stored less than `seconds` ago (hosts' clocks agreeing
        with the broker's to well within that)."""
        return self.last_ms > 0 and time.time() * 1000 - self.last_ms < seconds * 1000

    def choice(self, index: int) -> ChoiceProgress:
        return self.choices.setdefault(index, ChoiceProgress())

    def add(self, msg: LogRecord, timestamp_ms: int = 0) -> None:
        if self.finished or isinstance(msg, StreamOpened):  # a stream's header: for gateways
            return
        self.last_ms = max(self.last_ms, timestamp_ms)
        verdict = self.sequencer.offer(msg)
        if verdict in (Verdict.GAP, Verdict.DIVERGED):
            self.diverged = True
        if verdict is not Verdict.ACCEPT:
            return
        if isinstance(msg, ErrorReply):
            self.finished = True
            return
        for c in msg.choices:
            progress = self.choice(c.index)
            progress.token_ids.extend(c.token_ids)
            if c.finish_reason is not None:
                progress.finish_reason = c.finish_reason
        self.finished = msg.finished


@dataclass(frozen=True, slots=True)
class LogQuery:
    request_id: str
    reply_to: ReplyTo
    since: float  # unix seconds: no reply of the request is older (its creation time)


class LogReader:
    """One group-less consumer, used for one read at a time."""

    def __init__(self, consumer: AIOKafkaConsumer, *, skew_s: float = 10.0) -> None:
        self._consumer = consumer
        self._skew_s = skew_s
        self._lock = asyncio.Lock()
        self._codec: Codec[LogRecord] = Codec(LogRecord)

    async def replies(self, queries: list[LogQuery]) -> dict[str, StreamProgress]:
        """Every query's stream as stored now (up to each partition's end at the time of reading)."""
        out = {q.request_id: StreamProgress(q.request_id) for q in queries}
        by_tp: dict[TopicPartition, list[LogQuery]] = defaultdict(list)
        for q in queries:
            by_tp[TopicPartition(q.reply_to.topic, q.reply_to.partition)].append(q)
        async with self._lock:
            try:
                for tp, group in by_tp.items():
                    since_ms = int((min(q.since for q in group) - self._skew_s) * 1000)
                    wanted = {q.request_id.encode(): out[q.request_id] for q in group}
                    await self._scan(tp, max(since_ms, 0), wanted)
            finally:
                self._consumer.unsubscribe()  # an idle reader fetches nothing in the background
        return out

    async def _scan(self, tp: TopicPartition, since_ms: int,
                    wanted: dict[bytes, StreamProgress]) -> None:
        c = self._consumer
        found = (await c.offsets_for_times({tp: since_ms}))[tp]
        end = (await c.end_offsets([tp]))[tp]
        if found is None or found.offset >= end:
            return
        c.assign([tp])
        c.seek(tp, found.offset)
        position, idle = found.offset, 0
        while position < end:
            batch = await c.getmany(tp, timeout_ms=1000)
            records = batch.get(tp, ())
            if not records:
                idle += 1
                if idle >= 30:  # records below the end are there to be fetched
                    raise TimeoutError(f"reading {tp.topic}:{tp.partition} stalled at {position}")
                continue
            idle = 0
            for record in records:
                if record.offset >= end:
                    return
                position = record.offset + 1
                progress = wanted.get(record.key)
                if progress is None:
                    continue
                try:
                    progress.add(self._codec.decode(record.value), record.timestamp)
                except DecodeErrors:
                    continue  # set aside by the gateway's reply consumer already

    async def record(self, topic: str, partition: int, offset: int) -> ConsumerRecord | None:
        """The record at `offset`, or None when it is not in the log (past retention).
        Raises KafkaError or TimeoutError when the log cannot be read now."""
        tp = TopicPartition(topic, partition)
        async with self._lock:
            c = self._consumer
            try:
                begin = (await c.beginning_offsets([tp]))[tp]
                end = (await c.end_offsets([tp]))[tp]
                if not begin <= offset < end:
                    return None
                c.assign([tp])
                c.seek(tp, offset)
                for _ in range(30):  # an existing offset arrives in the first fetch or so
                    batch = await c.getmany(tp, timeout_ms=1000, max_records=1)
                    for record in batch.get(tp, ()):
                        return record if record.offset == offset else None
                raise TimeoutError(f"reading {topic}:{partition}:{offset} stalled")
            finally:
                c.unsubscribe()

