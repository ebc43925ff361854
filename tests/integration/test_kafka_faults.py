"""The broker paused, and the whole cluster down (the single broker killed) under load.

Paused for 5 s: every stream stalls and then completes. Down: new requests get a fast 503
with Retry-After, open streams end with a clear error event after a bounded wait (never a
hang), and when the broker returns everything recovers by itself: no service is restarted,
new requests succeed, and a stream the outage cut off can be resumed."""

import asyncio
import time

import aiohttp
import orjson
import pytest

from infra.bench.streams import Stream, complete, resume, start_streams
from tests.integration.conftest import KAFKA_OUTAGE_S, KAFKA_UNREACHABLE_S
from tests.integration.faults import down, paused, pids

pytestmark = pytest.mark.stack



async def test_every_stream_completes_across_a_five_second_broker_pause(http, stack):
    tasks, progress = start_streams(http, stack.model, [300 + 13 * i for i in range(8)], "pause")
    await progress.all_have(10)
    before = progress.snapshot()
    async with paused(stack, "kafka"):
        await asyncio.sleep(5)  # the pause itself: time is the fault
    streams = await asyncio.wait_for(asyncio.gather(*tasks), 180)
    for s, had in zip(streams, before):
        assert s.complete(), (s.errors, len(s.tokens), s.max_tokens)
        assert s.tokens[:len(had)] == had
    assert max(s.longest_gap() for s in streams) >= 4.0  # they did stall


async def _attempt(http: aiohttp.ClientSession, model: str) -> tuple[int, float, dict]:
    body = {"model": model, "prompt": "during", "max_tokens": 4, "stream": True}
    started = time.monotonic()
    async with http.post("/v1/completions", data=orjson.dumps(body),
                         headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started, dict(resp.headers)


async def test_with_the_cluster_down_requests_fail_fast_streams_end_and_all_recovers(http, stack):
    services = pids(stack)
    tasks, progress = start_streams(http, stack.model, [3000] * 4, "outage")
    try:
        await _cluster_down(http, stack, services, tasks, progress)
    finally:
        for task in tasks:  # on a failure: no stream of this test goes on into the next
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _cluster_down(http, stack, services, tasks, progress) -> None:
    await progress.all_have(10)
    async with down(stack, "kafka") as killed:
        await _until_unreachable(http, timeout=KAFKA_UNREACHABLE_S + 5)  # the gateway notices the silence
        status, took, headers = await _attempt(http, stack.model)
        assert status == 503 and took < 1.0 and int(headers["Retry-After"]) > 0
        async with http.get("/ready") as resp:
            assert resp.status == 503
        streams: list[Stream] = list(await asyncio.wait_for(asyncio.gather(*tasks), KAFKA_OUTAGE_S + 10))
        ended = time.monotonic() - killed
        assert ended <= KAFKA_OUTAGE_S + 3, ended
        for s in streams:
            assert s.status == 200 and s.done and s.errors, (s.errors, s.done)
            assert s.errors[0]["error"]["code"] == "bus_unavailable"
    # Back: no process was restarted, and new requests are served again.
    deadline = time.monotonic() + 60
    while (await _attempt(http, stack.model))[0] != 200:
        assert time.monotonic() < deadline, "no recovery within 60 s of the broker's return"
        await asyncio.sleep(0.5)
    assert pids(stack) == services
    # A stream the outage cut off goes on from where its client stopped: its generation was
    # kept while Kafka was away (its grace starts only once Kafka is back), and the error
    # event the gateway made took no event id, so nothing after the last delta is skipped.
    cut = streams[0]
    had, ids = list(cut.tokens), list(cut.ids)
    assert len(ids) == len(cut.arrivals)  # ids on its deltas only, not on the error or [DONE]
    cut.errors.clear()
    cut.done = False
    assert await resume(http, cut) == 200
    assert cut.complete(), (cut.errors, cut.finish, len(cut.tokens), cut.max_tokens)
    assert cut.tokens[:len(had)] == had and len(cut.tokens) > len(had)
    assert cut.ids == sorted(set(cut.ids)) and cut.ids[:len(ids)] == ids
    fresh = Stream(8)
    await complete(http, stack.model, "after the outage", fresh)
    assert fresh.complete()
    for other in streams[1:]:  # not resumed: their generations stop now rather than after the grace
        async with http.post(f"/v1/streams/{other.response_id}/cancel") as resp:
            assert (await resp.json())["status"] in ("cancelled", "completed")


async def _until_unreachable(http: aiohttp.ClientSession, timeout: float) -> None:
    """Until the gateway counts Kafka as unreachable (silent for GATEWAY_KAFKA_UNREACHABLE_S),
    as its /ready says: from then on, admission refuses at once."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get("/ready") as resp:
            if (await resp.json())["checks"]["kafka"].startswith("unreachable"):
                return
        assert time.monotonic() < deadline, "the gateway did not notice the outage"
        await asyncio.sleep(0.2)
