"""GroupRunner against a fake consumer: concurrency, manual commits, dead letters."""

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from shared.bus import Meta
from shared.consumer import GroupRunner
from shared.contracts import AbortRequest, Codec

TP = TopicPartition("t", 0)


@dataclass
class Record:
    offset: int
    value: bytes
    topic: str = "t"
    partition: int = 0
    key: bytes | None = None
    headers: tuple = ()


def valid(offset: int, rid: str) -> Record:
    return Record(offset, Codec(AbortRequest).encode(AbortRequest(request_id=rid)),
                  headers=Meta(rid).headers("abort_request"))


class FakeConsumer:
    def __init__(self, records):
        self._records = list(records)
        self.commits: list[int] = []
        self.committed = asyncio.Condition()
        self._paused: set = set()

    def subscribe(self, topics, listener=None):
        pass

    def assignment(self):
        return {TP}

    def pause(self, *tps):
        self._paused.update(tps)

    def resume(self, *tps):
        self._paused.difference_update(tps)

    def paused(self):
        return set(self._paused)

    async def getmany(self, timeout_ms=0, max_records=None):
        if self._records and TP not in self._paused:
            # Like aiokafka: never more than max_records.
            batch, self._records = self._records[:max_records], self._records[max_records:]
            return {TP: batch}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets):
        async with self.committed:
            self.commits.append(offsets[TP])
            self.committed.notify_all()

    async def wait_commit(self, offset):
        async with self.committed:
            await asyncio.wait_for(self.committed.wait_for(lambda: offset in self.commits), 5)


class FakePublisher:
    def __init__(self):
        self.dead = []

    async def dead_letter(self, topic, record, error, origin):
        self.dead.append((topic, record.offset, error))


async def test_commits_follow_the_oldest_unfinished_message_and_bad_records_are_set_aside():
    release = {rid: asyncio.Event() for rid in ("a", "c")}
    handled = []

    async def handler(msg, meta):
        await release[msg.request_id].wait()
        handled.append(msg.request_id)

    consumer = FakeConsumer([valid(0, "a"), Record(1, None), valid(2, "c")])  # 1: a tombstone
    publisher = FakePublisher()
    runner = GroupRunner(consumer, "t", Codec(AbortRequest), handler, publisher, "dlq",
                         name="test", max_in_flight=8)
    run = asyncio.create_task(runner.run())
    try:
        release["c"].set()
        await consumer.wait_commit(0)  # 0 still running: nothing past it may be committed
        assert max(consumer.commits) == 0 and runner.in_flight == 1
        assert [(t, offset) for t, offset, _ in publisher.dead] == [("dlq", 1)]
        assert "no value" in publisher.dead[0][2]  # why, for the operator
        release["a"].set()
        await consumer.wait_commit(3)
        assert handled == ["c", "a"]
    finally:
        runner.stop()
        await run
        await runner.drain(1)


async def test_in_flight_is_bounded_and_the_partition_paused():
    gate = asyncio.Event()
    started = []

    async def handler(msg, meta):
        started.append(msg.request_id)
        await gate.wait()

    consumer = FakeConsumer([valid(i, f"r{i}") for i in range(5)])
    runner = GroupRunner(consumer, "t", Codec(AbortRequest), handler, FakePublisher(), "dlq",
                         name="test", max_in_flight=2)
    run = asyncio.create_task(runner.run())
    try:
        for _ in range(50):  # let the loop run; it must stop taking at 2
            await asyncio.sleep(0)
        assert runner.in_flight == 2 and len(started) == 2
        assert TP in consumer.paused()  # full: the partition is paused, the loop keeps polling
        gate.set()
        await consumer.wait_commit(5)
        assert len(started) == 5
    finally:
        runner.stop()
        await run
        await runner.drain(1)


async def test_a_failing_handler_does_not_stop_the_consumer():
    async def handler(msg, meta):
        if msg.request_id == "boom":
            raise RuntimeError("bug")

    consumer = FakeConsumer([valid(0, "boom"), valid(1, "fine")])
    runner = GroupRunner(consumer, "t", Codec(AbortRequest), handler, FakePublisher(), "dlq",
                         name="test", max_in_flight=4)
    run = asyncio.create_task(runner.run())
    try:
        await consumer.wait_commit(2)
    finally:
        runner.stop()
        await run
        await runner.drain(1)


class FlakyConsumer(FakeConsumer):
    """Its first polls fail as they do while the cluster is unreachable."""

    def __init__(self, records, failures: int):
        super().__init__(records)
        self.failures = failures

    async def getmany(self, timeout_ms=0, max_records=None):
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("the cluster is unreachable")
        return await super().getmany(timeout_ms, max_records)


async def test_the_poll_loop_outlives_kafka_errors(monkeypatch):
    monkeypatch.setattr("shared.consumer.RETRY_S", (0.01, 0.02))
    handled = []

    async def handler(msg, meta):
        handled.append(msg.request_id)

    consumer = FlakyConsumer([valid(0, "after"), valid(1, "outage")], failures=3)
    runner = GroupRunner(consumer, "t", Codec(AbortRequest), handler, FakePublisher(), "dlq",
                         name="test", max_in_flight=4)
    run = asyncio.create_task(runner.run())
    try:
        await consumer.wait_commit(2)
        assert handled == ["after", "outage"] and consumer.failures == 0
    finally:
        runner.stop()
        await run
        await runner.drain(1)
