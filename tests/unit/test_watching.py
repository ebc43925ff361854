"""The gateway's side of stream watches, with a fake Redis and a fake aborter: renewals
while a client reads, the grace window when it leaves, an abort at once without one, and
the grace timed here when Redis is away."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.gateway.watching import Watcher


class FakeWatches:
    def __init__(self, fail: bool = False) -> None:
        self.holds: list[list[tuple[str, float]]] = []
        self.fail = fail

    async def hold(self, entries):
        if self.fail:
            raise RedisConnectionError("down")
        self.holds.append(list(entries))


class FakeAborter:
    def __init__(self) -> None:
        self.aborted: list[tuple[str, str]] = []

    def abort(self, request_id, reason):
        self.aborted.append((request_id, reason))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_client_that_leaves_starts_the_grace_window_in_redis():
    watches, aborter = FakeWatches(), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("r", 15.0) as reading:
        assert "r" in watcher
        reading.left()
    await settle()
    assert watches.holds == [[("r", 15.0)]] and aborter.aborted == [] and "r" not in watcher


async def test_a_stream_that_ended_is_not_held_again():
    watches, aborter = FakeWatches(), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("r", 15.0):
        pass
    await settle()
    assert watches.holds == [] and aborter.aborted == []


async def test_without_a_grace_window_a_client_that_leaves_aborts_at_once():
    watches, aborter = FakeWatches(), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("r", 0.0) as reading:
        reading.left()
    assert aborter.aborted == [("r", "client_disconnected")]


async def test_while_another_client_reads_the_stream_one_leaving_changes_nothing():
    watches, aborter = FakeWatches(), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("r", 0.0):
        with watcher.reading("r", 0.0) as second:
            second.left()
        assert "r" in watcher and aborter.aborted == []
    assert aborter.aborted == []  # the first reader got to the end


async def test_reading_streams_are_renewed_for_lease_plus_grace():
    watches, aborter = FakeWatches(), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=0.2)
    with watcher.reading("a", 15.0), watcher.reading("b", 3.0):
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.12)  # two renewals at lease/4
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(watches.holds) >= 2
    assert sorted(watches.holds[0]) == [("a", pytest.approx(15.2)), ("b", pytest.approx(3.2))]


async def test_without_redis_the_grace_is_timed_here():
    watches, aborter = FakeWatches(fail=True), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("gone", 0.05) as reading:
        reading.left()
    with watcher.reading("back", 0.05) as reading:
        reading.left()
    with watcher.reading("back", 0.05):  # the client came back to this gateway in time
        await asyncio.sleep(0.15)
    assert aborter.aborted == [("gone", "client_disconnected")]


async def test_without_redis_a_client_that_comes_back_and_leaves_again_gets_a_new_window():
    watches, aborter = FakeWatches(fail=True), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("r", 0.2) as reading:
        reading.left()
    await asyncio.sleep(0.1)
    with watcher.reading("r", 0.2) as reading:  # back here, then gone again
        reading.left()
    await asyncio.sleep(0.15)  # the first window has run out; the second has not
    assert aborter.aborted == []
    await asyncio.sleep(0.1)
    assert aborter.aborted == [("r", "client_disconnected")]


async def test_a_stream_an_outage_cut_is_held_until_kafka_answers_then_gets_its_grace():
    watches, aborter = FakeWatches(), FakeAborter()
    reachable = False
    watcher = Watcher(watches, aborter, lease_s=0.2, bus_reachable=lambda: reachable)
    with watcher.reading("r", 15.0) as reading:
        reading.cut()
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.12)  # renewals at lease/4 while Kafka is away
        assert [("r", pytest.approx(15.2))] in watches.holds and aborter.aborted == []
        held = len(watches.holds)
        reachable = True
        await asyncio.sleep(0.12)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    later = watches.holds[held:]
    assert [("r", 15.0)] in later  # its grace window, from Kafka's return
    assert all(("r", pytest.approx(15.2)) not in h for h in later[later.index([("r", 15.0)]):])
    assert aborter.aborted == []


async def test_a_resume_renews_the_watch_at_once():
    watches, aborter = FakeWatches(), FakeAborter()
    watcher = Watcher(watches, aborter, lease_s=4.0)
    with watcher.reading("r", 15.0):
        await watcher.hold_now("r", 15.0)
    assert watches.holds == [[("r", 19.0)]]
