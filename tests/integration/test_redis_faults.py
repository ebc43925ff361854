"""Redis faults on the real stack. Redis down (state or cache): everything is still served,
text and images, and it recovers by itself. Redis paused: a new request waits at most about
one Redis timeout (REDIS_TIMEOUT_S, 250 ms), never for the whole pause. Redis restarted
empty: no request fails while the worker registry fills again."""

import asyncio
import statistics
import time

import pytest

from infra.bench.streams import Stream, complete, start_streams
from tests.integration.conftest import GRACE_S, LEASE_S
from tests.integration.faults import down, paused, pids
from tests.integration.helpers import metric
from tests.integration.images import png_url

pytestmark = pytest.mark.stack


async def ttft(http, stack, tag: str) -> float:
    s = Stream(4)
    started = time.monotonic()
    await complete(http, stack.model, tag, s)
    assert s.complete(), (s.status, s.errors)
    return s.arrivals[0] - started


async def image_answer(client, stack) -> int:
    resp = await client.chat.completions.create(
        model=stack.vl_model, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_url(64, 48, seed=7)}},
            {"type": "text", "text": "What is it?"}]}])
    return resp.usage.completion_tokens


@pytest.mark.parametrize("name", ["redis", "redis-cache"])
async def test_with_redis_down_everything_is_still_served(http, client, stack, name):
    services = pids(stack)
    tasks, progress = start_streams(http, stack.model, [200 + 13 * i for i in range(4)], f"no-{name}")
    await progress.all_have(5)
    async with down(stack, name):
        for i in range(4):
            await ttft(http, stack, f"without {name} {i}")
        assert await image_answer(client, stack) >= 1  # pixels travel in the request
        async with http.get("/ready") as resp:
            body = await resp.json()
        assert resp.status == 200, body
        streams = await asyncio.wait_for(asyncio.gather(*tasks), 180)
        assert all(s.complete() for s in streams), [(s.errors, len(s.tokens)) for s in streams]
    # Back (empty): served as before, liveness known again, nothing restarted.
    await ttft(http, stack, f"after {name}")
    assert await image_answer(client, stack) >= 1
    deadline = time.monotonic() + 30
    while True:
        async with http.get("/ready") as resp:
            if set((await resp.json())["models"].values()) == {"ready"}:
                break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    assert pids(stack) == services


async def test_a_paused_redis_delays_a_new_request_by_one_timeout_at_most(http, stack):
    abandoned = await metric(http, stack.worker_metrics, "sluice_worker_abandoned_total")
    tasks, progress = start_streams(http, stack.model, [4000] * 4, "across the pause")
    await progress.all_have(5)
    baseline = [await ttft(http, stack, f"before {i}") for i in range(5)]  # under the same load
    async with paused(stack, "redis") as since:
        during = [await ttft(http, stack, f"paused {i}") for i in range(12)]
        # Longer than every watch lasts without a renewal (lease + grace): the streams read
        # all along must not be taken for abandoned when Redis answers again.
        await asyncio.sleep(max(0.0, since + LEASE_S + GRACE_S + 2 - time.monotonic()))
    # Right after the pause, the worker registry is stale (no heartbeat got through): no
    # request may be refused for want of a live worker while the heartbeats come back.
    after = time.monotonic()
    while time.monotonic() - after < 3:  # also past the workers' first watch checks
        await ttft(http, stack, "after the pause")  # asserts it completed
    assert not any(t.done() for t in tasks), "the streams ended before the check; make them longer"
    streams = await asyncio.wait_for(asyncio.gather(*tasks), 180)
    assert all(s.complete() for s in streams), [(s.finish, len(s.tokens), s.errors) for s in streams]
    assert await metric(http, stack.worker_metrics, "sluice_worker_abandoned_total") == abandoned
    # Before this was bounded, every new request waited for the whole pause (+8.7 s).
    assert max(during) <= max(baseline) + 1.0, (baseline, during)
    assert statistics.median(during) <= statistics.median(baseline) + 0.3, (baseline, during)


async def test_no_request_fails_while_redis_restarts_empty(http, stack):
    """Requests keep coming while the state server is killed and restarted empty (no
    persistence): the worker registry, claims and watches are gone, and rebuilt."""
    results: list[Stream] = []
    stop = asyncio.Event()

    async def load(slot: int) -> None:
        n = 0
        while not stop.is_set():
            s = Stream(6)
            results.append(await complete(http, stack.model, f"restart {slot}.{n}", s))
            n += 1

    loaders = [asyncio.create_task(load(i)) for i in range(3)]
    await asyncio.sleep(1)
    async with down(stack, "redis"):
        pass  # killed, then started again at once, empty
    restarted = time.monotonic()
    await asyncio.sleep(LEASE_S)  # the load goes on while the registry fills again (a lease)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*loaders), 120)
    failed = [(s.status, s.errors) for s in results if not s.complete()]
    assert not failed, failed
    # Requests were served while the registry was younger than a lease (it could not tell
    # yet which workers live): those are the ones a 503 would have met.
    young = [s for s in results if s.arrivals and restarted <= s.arrivals[0] < restarted + LEASE_S]
    assert len(young) >= 5, len(young)
