"""Claims against a real Redis (its Lua scripts and clock): one owner per request, leases
that lapse, releases, done marks, abort marks, and claims rebuilt after Redis lost them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from infra.localinfra import start_redis
from shared.bus import RecordLoc
from shared.claims import AbortMarks, Claims, Held, Standing

LOC = RecordLoc("sluice.infer.cpu.m", 3, 42)
KEEP_MS = 60_000


@pytest.fixture(scope="module")
async def redis(tmp_path_factory) -> AsyncIterator[Redis]:
    url, unit = start_redis(tmp_path_factory.mktemp("redis"))
    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()
        unit.stop()


def claims(redis: Redis, owner: str, lease_s: float = 30.0) -> Claims:
    return Claims(redis, "t", "cpu.m", owner, lease_s)


async def test_one_owner_at_a_time(redis):
    a, b = claims(redis, "A"), claims(redis, "B")
    first = await a.acquire("r1", LOC, KEEP_MS)
    assert (first.standing, first.epoch, first.takeover, first.loc) == (Standing.ACQUIRED, 0, False, LOC)
    assert (await a.acquire("r1", LOC, KEEP_MS)).standing is Standing.MINE
    other = await b.acquire("r1", LOC, KEEP_MS)
    assert (other.standing, other.previous_owner) == (Standing.ELSEWHERE, "A")


async def test_a_lapsed_lease_is_taken_over_with_the_next_epoch(redis):
    a, b = claims(redis, "A", lease_s=0.3), claims(redis, "B")
    await a.acquire("r2", LOC, KEEP_MS)
    await asyncio.sleep(0.4)  # Redis's clock lapses the lease; nothing to await on
    assert "r2" in await b.lapsed()
    taken = await b.acquire("r2", None, KEEP_MS)
    assert (taken.standing, taken.epoch, taken.previous_owner, taken.loc) == (
        Standing.ACQUIRED, 1, "A", LOC)  # the location stays with the claim
    # The old owner's renewal now reports it lost.
    assert await a.renew([Held("r2", 0, LOC, KEEP_MS)]) == {"r2"}


async def test_renewal_keeps_a_lease_live(redis):
    a, b = claims(redis, "A", lease_s=0.5), claims(redis, "B")
    await a.acquire("r3", LOC, KEEP_MS)
    for _ in range(4):
        await asyncio.sleep(0.2)
        assert await a.renew([Held("r3", 0, LOC, KEEP_MS)]) == set()
    assert (await b.acquire("r3", LOC, KEEP_MS)).standing is Standing.ELSEWHERE


async def test_released_requests_are_taken_over_at_once(redis):
    a, b = claims(redis, "A"), claims(redis, "B")
    await a.acquire("r4", LOC, KEEP_MS)
    assert not await b.release("r4", 0)  # only the owner releases
    assert await a.release("r4", 0)
    assert "r4" in await b.lapsed()
    assert (await b.acquire("r4", None, KEEP_MS)).takeover


async def test_done_is_done(redis):
    a, b = claims(redis, "A"), claims(redis, "B")
    await a.acquire("r5", LOC, KEEP_MS)
    assert await a.finish("r5", 0, KEEP_MS)
    assert (await b.acquire("r5", LOC, KEEP_MS)).standing is Standing.DONE
    assert "r5" not in await b.lapsed()
    assert 0 < await redis.pttl("t:claim:r5") <= KEEP_MS  # the mark goes with the deadline


async def test_an_abort_mark_reaches_whoever_claims_next(redis):
    await AbortMarks(redis, "t").mark("r6", KEEP_MS)
    claim = await claims(redis, "A").acquire("r6", LOC, KEEP_MS)
    assert claim.standing is Standing.ACQUIRED and claim.epoch == 0 and claim.aborted


async def test_claims_lost_with_redis_are_taken_back_by_their_owner(redis):
    a, b = claims(redis, "A"), claims(redis, "B")
    await a.acquire("r7", LOC, KEEP_MS)
    await redis.flushdb()  # Redis restarted empty
    assert await a.renew([Held("r7", 2, LOC, KEEP_MS)]) == set()
    other = await b.acquire("r7", LOC, KEEP_MS)
    assert (other.standing, other.previous_owner, other.epoch) == (Standing.ELSEWHERE, "A", 2)


async def test_only_the_holder_finishes_or_releases(redis):
    a, b = claims(redis, "A", lease_s=0.3), claims(redis, "B")
    await a.acquire("r8", LOC, KEEP_MS)
    await asyncio.sleep(0.4)
    assert (await b.acquire("r8", None, KEEP_MS)).epoch == 1  # B took it over
    # A, stale, neither ends B's stream nor frees B's lease.
    assert not await a.finish("r8", 0, KEEP_MS)
    assert not await a.release("r8", 0)
    assert (await claims(redis, "C").acquire("r8", LOC, KEEP_MS)).standing is Standing.ELSEWHERE
    assert await b.finish("r8", 1, KEEP_MS)


async def test_a_request_answered_without_a_claim_is_marked_done(redis):
    """An expired request is answered before anyone claims it."""
    assert await claims(redis, "A").finish("r9", 0, KEEP_MS)
    assert (await claims(redis, "B").acquire("r9", LOC, KEEP_MS)).standing is Standing.DONE


async def test_after_redis_restarted_empty_older_requests_may_have_run(redis):
    import time

    before = time.time()
    await claims(redis, "A").acquire("r10", LOC, KEEP_MS)
    await redis.flushdb()  # Redis restarted empty: every claim forgotten
    fresh = await claims(redis, "B").acquire("r10", LOC, KEEP_MS)
    assert (fresh.standing, fresh.epoch) == (Standing.ACQUIRED, 0)
    assert fresh.may_have_run(created=before)  # made before the store restarted: check the log
    assert not fresh.may_have_run(created=fresh.since + 60)
    # The log says epoch 3 ran: the claim moves there, for its renewals to match.
    b = claims(redis, "B")
    assert await b.move_epoch("r10", 0, 4)
    assert await b.renew([Held("r10", 4, LOC, KEEP_MS)]) == set()
    assert not await claims(redis, "C").move_epoch("r10", 4, 5)  # only the holder moves it
