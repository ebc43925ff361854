"""The follower reads resumed streams back from a reply partition (a fake consumer here):
the header and every reply from the stream's start, then what comes live; a later resume
that needs earlier records rewinds the partition without any stream seeing a record twice."""

import asyncio
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndTimestamp

from shared.contracts import ChoiceDelta, Codec, LogRecord, StreamOpened, TokenDelta
from shared.streamid import new_request_id, parse_request_id

from services.gateway.follower import Follower
from services.gateway.metrics import GatewayMetrics

TOPIC = "sluice.replies"
CODEC = Codec(LogRecord)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: int
    headers: tuple = ()


class FakeLog:
    def __init__(self, partitions: int) -> None:
        self.records = {p: [] for p in range(partitions)}
        self.changed = asyncio.Event()

    def append(self, partition: int, msg, timestamp_ms: int) -> None:
        log = self.records[partition]
        log.append(Record(TOPIC, partition, len(log), msg.request_id.encode(), CODEC.encode(msg),
                          timestamp_ms))
        self.changed.set()


class FakeConsumer:
    """What the follower uses of AIOKafkaConsumer; like it, assign() forgets positions."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.assigned: list[TopicPartition] = []
        self.pos: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[int, int]] = []

    async def offsets_for_times(self, query):
        out = {}
        for tp, ts in query.items():
            found = next((r for r in self.log.records[tp.partition] if r.timestamp >= ts), None)
            out[tp] = None if found is None else OffsetAndTimestamp(found.offset, found.timestamp)
        return out

    async def end_offsets(self, tps):
        return {tp: len(self.log.records[tp.partition]) for tp in tps}

    def assign(self, tps):
        self.assigned, self.pos = list(tps), {}

    def unsubscribe(self):
        self.assigned, self.pos = [], {}

    def seek(self, tp, offset):
        assert tp in self.assigned
        self.pos[tp] = offset
        self.seeks.append((tp.partition, offset))

    async def getmany(self, timeout_ms=0):
        out = {}
        for tp in self.assigned:
            log = self.log.records[tp.partition][self.pos[tp]:]  # KeyError: a position never set
            if log:
                out[tp], self.pos[tp] = log, self.pos[tp] + len(log)
        if not out:
            self.log.changed.clear()
            try:
                await asyncio.wait_for(self.log.changed.wait(), timeout_ms / 1000)
            except TimeoutError:
                pass
        return out


def opened(rid: str) -> StreamOpened:
    return StreamOpened(request_id=rid, gateway="g", endpoint="chat", model="m", created=1.0, n=1,
                        include_usage=False)


def delta(rid: str, seq: int, finished: bool = False) -> TokenDelta:
    return TokenDelta(request_id=rid, source="w", seq=seq, finished=finished, choices=[
        ChoiceDelta(index=0, text=f"t{seq}", token_ids=[seq], num_tokens=seq + 1,
                    finish_reason="length" if finished else None)])


async def texts(collector, n: int) -> list[str]:
    out: list[str] = []
    async for batch in collector.batches(5.0):
        out += [d.choices[0].text for d in batch]
        if len(out) >= n:
            return out
    return out


async def assigned(consumer: FakeConsumer, count: int) -> list:
    """The assignment once it has `count` partitions (the run loop applies changes between
    polls, and exposes nothing to await)."""
    for _ in range(100):
        if len(consumer.assigned) == count:
            return consumer.assigned
        await asyncio.sleep(0.05)
    raise AssertionError(f"assignment stayed {consumer.assigned}")


@pytest.fixture
async def setup():
    log = FakeLog(4)
    consumer = FakeConsumer(log)
    metrics = GatewayMetrics()
    follower = Follower(consumer, TOPIC, 4, metrics)
    task = asyncio.create_task(follower.run())
    yield log, consumer, follower, metrics
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_resumed_stream_gets_its_header_its_replies_then_live_ones(setup):
    log, _, follower, _ = setup
    rid = new_request_id(2, 100.0)
    other = new_request_id(2, 99.0)
    log.append(2, opened(other), 99_000)
    log.append(2, opened(rid), 100_000)
    log.append(2, delta(other, 0), 100_100)
    log.append(2, delta(rid, 0), 100_200)
    log.append(2, delta(rid, 1), 100_300)
    following = await follower.open(parse_request_id(rid))
    await asyncio.wait_for(following.collector.caught_up.wait(), 5)
    assert following.collector.opened == opened(rid)
    assert await texts(following.collector, 2) == ["t0", "t1"]
    log.append(2, delta(rid, 2, finished=True), 100_400)
    assert await texts(following.collector, 1) == ["t2"]
    assert following.collector.finished and following.collector.ended_ms == 100_400


async def test_an_earlier_resume_rewinds_and_nobody_sees_a_record_twice(setup):
    log, consumer, follower, metrics = setup
    early, late = new_request_id(1, 50.0), new_request_id(1, 100.0)
    for msg, ts in [(opened(early), 50_000), (delta(early, 0), 60_000), (opened(late), 100_000),
                    (delta(late, 0), 100_100), (delta(early, 1), 100_200), (delta(late, 1), 100_300)]:
        log.append(1, msg, ts)
    first = await follower.open(parse_request_id(late))
    await asyncio.wait_for(first.collector.caught_up.wait(), 5)
    assert await texts(first.collector, 2) == ["t0", "t1"]
    second = await follower.open(parse_request_id(early))
    await asyncio.wait_for(second.collector.caught_up.wait(), 5)
    assert await texts(second.collector, 2) == ["t0", "t1"]
    assert (1, 0) in consumer.seeks  # rewound to the earlier stream's start
    assert metrics.duplicates._value.get() == 0  # the later stream's records, read again, not handed over
    log.append(1, delta(late, 2, finished=True), 100_400)
    assert await texts(first.collector, 1) == ["t2"]


async def test_streams_on_several_partitions_and_closing_them(setup):
    log, consumer, follower, _ = setup
    a, b = new_request_id(0, 10.0), new_request_id(3, 10.0)
    log.append(0, opened(a), 10_000)
    log.append(3, opened(b), 10_000)
    fa = await follower.open(parse_request_id(a))
    fb = await follower.open(parse_request_id(b))
    for f in (fa, fb):
        await asyncio.wait_for(f.collector.caught_up.wait(), 5)
        assert f.collector.opened is not None
    follower.close(fa)
    assert [tp.partition for tp in await assigned(consumer, 1)] == [3]
    follower.close(fb)
    assert await assigned(consumer, 0) == [] and len(follower) == 0


async def test_a_stream_with_nothing_stored_is_caught_up_at_once(setup):
    _, _, follower, _ = setup
    following = await follower.open(parse_request_id(new_request_id(0, 500.0)))
    assert following.collector.caught_up.is_set() and following.collector.opened is None


async def test_a_partition_the_topic_lacks_is_no_stream(setup):
    _, _, follower, _ = setup
    assert await follower.open(parse_request_id(new_request_id(9, 1.0))) is None


async def test_a_new_resume_is_not_caught_up_by_a_poll_that_was_under_way():
    """Records a poll returns before the new resume's partition was put back to its start
    must not count as the resume having caught up (it would miss its own records). The run
    loop's steps are driven by hand here, to place the poll exactly."""
    log = FakeLog(1)
    consumer = FakeConsumer(log)
    follower = Follower(consumer, TOPIC, 1, GatewayMetrics())
    old, other = new_request_id(0, 10.0), new_request_id(0, 30.0)
    for msg, ts in [(opened(old), 10_000), (delta(old, 0), 10_100), (opened(other), 30_000),
                    (delta(other, 0), 30_100)]:
        log.append(0, msg, ts)
    f_other = await follower.open(parse_request_id(other))
    follower._apply()
    follower._route(f_other.tp, log.records[0][2:4])
    assert f_other.collector.caught_up.is_set()
    f_old = await follower.open(parse_request_id(old))
    log.append(0, delta(other, 1), 30_200)
    follower._route(f_old.tp, log.records[0][4:])  # the poll under way when f_old opened
    assert not f_old.collector.caught_up.is_set()
    follower._apply()
    assert consumer.pos[f_old.tp] == 0  # rewound to the old stream's start
    follower._route(f_old.tp, log.records[0][0:5])
    assert f_old.collector.caught_up.is_set() and f_old.collector.opened == opened(old)
