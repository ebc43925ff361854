"""Reading streams back from the reply log, for resumes on any gateway.

A resumed stream's records are found from its id alone (shared.streamid: the partition and
the creation time): Kafka's time index gives the first offset that can hold them. One
group-less consumer follows every partition that has a resumed stream, from the earliest
offset any of them needs, and hands each stream's records to its collector; the sequencer
in the collector drops what it has seen already, so a partition may be read again from an
earlier point (rewound) when a new resume needs it: each stream is handed only the records
past those it has (and its sequencer would drop a repeat anyway). A collector is caught up once its partition has been read, from at most its start,
past the end it had when the resume began: by then the stream's header (StreamOpened) and
everything stored so far have been delivered.

A new resume waits in `_pending` until the run loop has put its partition where it starts
(between polls; a new resume cuts the poll under way short); only then does it receive
records.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shared.contracts import Codec, DecodeErrors, LogRecord
from shared.streamid import StreamKey

from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import RETRY_S, Collector

log = logging.getLogger(__name__)

POLL_MS = 200
SKEW_MS = 10_000  # the id's creation time is the gateway's clock; the log's is the broker's


@dataclass(eq=False)
class Following:
    """One resumed stream being read."""

    key: StreamKey
    tp: TopicPartition
    start: int  # the first offset that can hold its records
    end: int  # the partition's end when the resume began
    collector: Collector
    next_offset: int = 0  # what it has been handed: a rewind for another stream skips it

    def __post_init__(self) -> None:
        self.next_offset = self.start


class Follower:
    def __init__(self, consumer: AIOKafkaConsumer, topic: str, partitions: int,
                 metrics: GatewayMetrics) -> None:
        self._consumer = consumer
        self._topic = topic
        self._partitions = partitions
        self._metrics = metrics
        self._codec: Codec[LogRecord] = Codec(LogRecord)
        self._subs: dict[TopicPartition, dict[bytes, list[Following]]] = {}
        self._pending: list[Following] = []  # not yet positioned
        self._pos: dict[TopicPartition, int] = {}  # the next offset to hand out
        self._assigned: set[TopicPartition] = set()
        self._changed = asyncio.Event()
        # Resumes waiting to learn where their partition's records start and end: looked up
        # together (a burst of resumes, after a gateway died, costs two requests, not two each).
        self._lookups: list[tuple[StreamKey, asyncio.Future[tuple[int, int]]]] = []
        self._lookup: asyncio.Task | None = None

    def _all(self) -> list[Following]:
        active = (f for subs in self._subs.values() for fs in subs.values() for f in fs)
        return [*self._pending, *active]

    def __len__(self) -> int:
        return len(self._all())

    def collectors(self) -> list[Collector]:
        return [f.collector for f in self._all()]

    async def open(self, key: StreamKey) -> Following | None:
        """Start reading a stream; None when its partition does not exist. Raises KafkaError
        when the log cannot be reached."""
        if not 0 <= key.partition < self._partitions:
            return None
        tp = TopicPartition(self._topic, key.partition)
        bounds: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._lookups.append((key, bounds))
        if self._lookup is None or self._lookup.done():
            self._lookup = asyncio.create_task(self._look_up(), name="follower-lookup")
        start, end = await bounds
        following = Following(key, tp, start, end, Collector(self._metrics))
        if start >= end:
            following.collector.caught_up.set()  # nothing stored since its creation time
        self._pending.append(following)
        self._changed.set()
        return following

    async def _look_up(self) -> None:
        """Where the records of the resumes waiting can start (the time index, from the
        earliest creation time per partition) and where each partition ends now."""
        while self._lookups:
            batch, self._lookups = self._lookups, []
            since: dict[TopicPartition, int] = {}
            for key, _ in batch:
                tp = TopicPartition(self._topic, key.partition)
                since[tp] = min(since.get(tp, key.created_ms), key.created_ms)
            try:
                found = await self._consumer.offsets_for_times(
                    {tp: max(ms - SKEW_MS, 0) for tp, ms in since.items()})
                ends = await self._consumer.end_offsets(list(since))
            except Exception as exc:
                for _, bounds in batch:
                    if not bounds.done():
                        bounds.set_exception(exc)
                continue
            for key, bounds in batch:
                tp = TopicPartition(self._topic, key.partition)
                end = ends[tp]
                start = end if found[tp] is None else min(found[tp].offset, end)
                if not bounds.done():
                    bounds.set_result((start, end))

    def close(self, following: Following) -> None:
        if following in self._pending:
            self._pending.remove(following)
            return
        subs = self._subs.get(following.tp, {})
        readers = subs.get(following.key.request_id.encode(), [])
        if following in readers:
            readers.remove(following)
        if not readers:
            subs.pop(following.key.request_id.encode(), None)
        if not subs:
            self._subs.pop(following.tp, None)
            self._changed.set()

    async def run(self) -> None:
        delay = RETRY_S[0]
        while True:
            if self._changed.is_set():
                self._changed.clear()
                self._apply()
            if not self._assigned:
                await self._changed.wait()
                continue
            try:
                batches = await self._poll()
            except KafkaError as exc:
                log.warning("resume fetch failed (%r); retrying in %gs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            delay = RETRY_S[0]
            for tp, records in batches.items():
                self._route(tp, records)

    async def _poll(self) -> dict:
        """One poll, cut short by a new resume (it starts at once rather than after the poll)."""
        poll = asyncio.ensure_future(self._consumer.getmany(timeout_ms=POLL_MS))
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({poll, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            if not poll.done():
                poll.cancel()  # what it fetched stays buffered in the consumer
            await asyncio.gather(poll, return_exceptions=True)
        return {} if poll.cancelled() else poll.result()

    def _apply(self) -> None:
        """Assign the partitions resumes need and put each where its earliest reader needs it."""
        want: dict[TopicPartition, int] = {}
        for following in self._pending:
            want[following.tp] = min(want.get(following.tp, following.start), following.start)
            self._subs.setdefault(following.tp, {}).setdefault(
                following.key.request_id.encode(), []).append(following)
        self._pending.clear()
        wanted = set(self._subs)
        reassigned = wanted != self._assigned
        if reassigned:
            if wanted:
                self._consumer.assign(list(wanted))  # positions are lost: every one is set below
            else:
                self._consumer.unsubscribe()
            self._assigned = wanted
        for tp in wanted:
            pos, start = self._pos.get(tp), want.get(tp)
            target = pos if start is None else start if pos is None else min(pos, start)
            if target is not None and (reassigned or target != pos):
                self._consumer.seek(tp, target)
                self._pos[tp] = target
        for tp in list(self._pos):
            if tp not in wanted:
                del self._pos[tp]

    def _route(self, tp: TopicPartition, records) -> None:
        subs = self._subs.get(tp)
        if subs is None:
            return
        for record in records:
            self._pos[tp] = record.offset + 1
            readers = subs.get(record.key)
            if not readers:
                continue
            msg = None
            for following in readers:
                if record.offset < following.next_offset:
                    continue  # it has this one already (a rewind for a newer resume)
                following.next_offset = record.offset + 1
                if msg is None:
                    try:
                        msg = self._codec.decode(record.value)
                    except DecodeErrors:
                        break  # the home gateway of this partition dead-letters it
                following.collector.record(msg, record.timestamp)
        pos = self._pos.get(tp, 0)
        for readers in subs.values():
            for following in readers:
                if pos >= following.end:
                    following.collector.caught_up.set()
