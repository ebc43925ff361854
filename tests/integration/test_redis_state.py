"""Against a real redis-server of its own: stream watches (shared.watches), the worker
registry's age after a restart (shared.cache), and guarded connections (shared.redisconn)
that wait one timeout at most for a Redis that hangs, then fail fast until it answers."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from infra.localinfra import start_redis
from shared.cache import WorkerRegistry
from shared.redisconn import RedisDown, redis_client
from shared.watches import Watches


@pytest.fixture(scope="module")
async def server(tmp_path_factory) -> AsyncIterator[tuple[str, object]]:
    url, unit = start_redis(tmp_path_factory.mktemp("redis-state"))
    try:
        yield url, unit
    finally:
        unit.stop()


@pytest.fixture
async def redis(server) -> AsyncIterator[Redis]:
    client = Redis.from_url(server[0])
    try:
        yield client
    finally:
        await client.aclose()


async def test_watches_expire_unless_renewed_and_a_missing_one_counts_as_renewed(redis):
    w = Watches(redis, "w1")
    await w.hold([("held", 30.0), ("left", 0.05)])
    await asyncio.sleep(0.1)  # "left" runs out: time is the condition
    # "new" has no entry: it is created as if just renewed, so it is not expired.
    assert await w.expired([("held", 5.0), ("left", 5.0), ("new", 0.05)]) == {"left"}
    await asyncio.sleep(0.1)
    assert await w.expired([("new", 5.0)]) == {"new"}
    await w.hold([("left", 30.0)])  # a client resumed it
    assert await w.expired([("left", 5.0)]) == set()
    await w.forget("held")
    assert await redis.zscore("w1:watch", "held") is None


async def test_a_young_registry_cannot_tell_that_no_worker_is_live(redis):
    registry = WorkerRegistry(redis, "r1", ttl_s=0.3)
    assert await registry.live("cpu.m") is None  # just created (as after a restart): unknown
    await asyncio.sleep(0.35)
    assert await registry.live("cpu.m") == 0  # one period on, none means none
    await registry.heartbeat("cpu.m", "w1")
    assert await registry.live("cpu.m") == 1
    await redis.delete("r1:workers-since", "r1:workers:cpu.m")  # Redis restarted empty
    assert await registry.live("cpu.m") is None


async def test_a_hung_redis_costs_one_timeout_then_fails_fast_until_it_answers(server):
    url, unit = server
    async with redis_client(url, 0.25, "test") as client:
        assert await client.set("k", "v")
        unit.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeout):
                await client.get("k")
            first = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(RedisDown):
                await client.get("k")
            with pytest.raises(RedisDown):
                async with client.pipeline() as pipe:
                    await pipe.get("k").execute()
            fast = time.monotonic() - started
        finally:
            unit.proc.send_signal(signal.SIGCONT)
        assert first < 0.6, first  # one timeout (250 ms), not redis-py's ten retries
        assert fast < 0.05, fast
        for _ in range(40):  # the background ping finds it again within a second or so
            try:
                assert await client.get("k") == b"v"
                break
            except RedisDown:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the connection never recovered")


async def test_after_a_restart_stale_connections_do_not_trip_it_again(tmp_path_factory):
    """A pool of connections to a server that died and came back: every command goes
    through (a stale connection is replaced at once), rather than each stale connection
    failing in turn and tripping the breaker (a worker then missed its heartbeats for
    seconds, and the image a worker read next failed its request)."""
    url, unit = start_redis(tmp_path_factory.mktemp("redis-restart"))
    try:
        async with redis_client(url, 0.25, "test") as client:
            await asyncio.gather(*(client.blpop(f"nothing-{i}", timeout=0.05) for i in range(8)))
            assert len(client.connection_pool._available_connections) == 8
            unit.proc.kill()
            unit.proc.wait()
            unit = unit.respawn()
            unit.wait_ready(20)
            results = await asyncio.gather(*(client.set(f"k{i}", i) for i in range(8)),
                                           return_exceptions=True)
            assert results == [True] * 8, results
            assert not client.breaker.down
    finally:
        unit.stop()


async def test_right_after_a_hung_redis_answers_again_no_watch_counts_as_expired(server):
    """The gateways' renewals were held up too: a worker that checked its watches first
    would stop streams whose clients are still reading."""
    url, unit = server
    async with redis_client(url, 0.25, "test") as client:
        w = Watches(client, "w2")
        await w.hold([("r", 0.05)])
        unit.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeout):
                await client.get("k")
        finally:
            unit.proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(_recovered(client), 10)
        assert await w.expired([("r", 5.0)], settle_s=0.5) == set()  # ran out during the hang
        await asyncio.sleep(0.5)  # the settling time itself is the condition
        assert await w.expired([("r", 5.0)], settle_s=0.5) == {"r"}


async def _recovered(client) -> None:
    while client.breaker.down or client.breaker.recovered_at is None:
        await asyncio.sleep(0.05)
