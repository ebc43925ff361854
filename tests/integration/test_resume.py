"""Resumable streams: a client that lost its connection goes on from its last event on any
gateway (GET /v1/streams/{id}), a finished stream can be read again within the retention
window, ids and keys are checked, and POST /v1/streams/{id}/cancel stops a generation."""

import asyncio
import time

import orjson
import pytest

from infra.bench.streams import Progress, Stream, complete, resume
from infra.procs import detail
from shared.streamid import new_request_id
from tests.integration.conftest import GRACE_S

pytestmark = pytest.mark.stack


def check_events(stream: Stream) -> None:
    """Event ids rise, with no event twice: the resume gave exactly the remaining ones."""
    assert stream.ids == sorted(set(stream.ids)), stream.ids


async def test_a_stream_goes_on_on_another_gateway_from_its_last_event(http, stack):
    s = Stream(600)
    await complete(http, stack.model, "resume me: once upon a time", s, stop_at=100)
    assert s.status == 200 and 100 <= len(s.tokens) < 600 and not s.done
    had = list(s.tokens)
    assert await resume(http, s, stack.urls[1]) == 200
    assert s.complete(), (s.errors, len(s.tokens), s.usage)
    check_events(s)
    assert s.tokens[:len(had)] == had
    # Without Last-Event-ID: the whole stream again, from its start, as first sent.
    whole = Stream(600, request_id=s.request_id)
    assert await resume(http, whole) == 200
    assert whole.complete() and whole.tokens == s.tokens and whole.ids == s.ids
    # starting_after, as a query parameter, works as Last-Event-ID does.
    async with http.get(f"/v1/streams/{s.response_id}?starting_after={s.ids[-3]}") as resp:
        body = await resp.text()
    assert [line for line in body.split("\n") if line.startswith("id: ")] == [
        f"id: {i}" for i in s.ids[-2:]]
    assert body.rstrip().endswith("data: [DONE]")


async def test_a_finished_chat_stream_can_be_read_again_event_for_event(http, stack):
    body = {"model": stack.model, "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post("/v1/chat/completions", json=body) as resp:
        first = await resp.read()
        rid = resp.headers["X-Request-Id"]
    async with http.get(f"{stack.urls[1]}/v1/streams/chatcmpl-{rid}") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        again = await resp.read()
    assert again == first  # the same events, ids, usage chunk and [DONE]
    events = [orjson.loads(line[6:]) for line in first.split(b"\n") if line.startswith(b"data: {")]
    assert events[0]["id"] == f"chatcmpl-{rid}" and events[-1]["usage"]["completion_tokens"] == 12


async def test_unknown_ids_and_malformed_event_ids_are_refused(http, stack):
    s = Stream(4)
    await complete(http, stack.model, "short", s)
    # Well-formed ids of streams that cannot exist: made before the oldest one that can still
    # be resumed (request timeout + retention ago), or in the future.
    old = "cmpl-" + new_request_id(0, time.time() - 1800 - 600 - 3600)
    future = "cmpl-" + new_request_id(0, time.time() + 3600)
    for bad_id in ("cmpl-" + "0" * 32, "nonsense", f"chatcmpl-{s.request_id}", "cmpl-abc", old, future):
        async with http.get(f"/v1/streams/{bad_id}") as resp:
            assert resp.status == 404, bad_id
            error = (await resp.json())["error"]
        assert error["code"] == "stream_not_found" and error["type"] == "invalid_request_error"
    for header in ({"Last-Event-ID": "seven"}, {"Last-Event-ID": "-1"}):
        async with http.get(f"/v1/streams/{s.response_id}", headers=header) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "Last-Event-ID"
    async with http.get(f"/v1/streams/{s.response_id}?starting_after=1.5") as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "starting_after"
    async with http.post(f"/v1/streams/cmpl-{'1' * 32}/cancel") as resp:
        assert resp.status == 404


async def test_a_client_that_resumes_within_the_grace_window_keeps_its_generation(http, stack):
    s = Stream(1500)
    await complete(http, stack.model, "keep me going", s, stop_at=30)
    # Disconnected for most of the window: the resume renews the stream's watch at once,
    # before the worker's next check (every lease/4) finds its grace run out.
    await asyncio.sleep(GRACE_S - 0.8)
    assert await resume(http, s, stack.urls[1]) == 200
    assert s.complete(), (s.finish, len(s.tokens), s.errors)  # not abandoned meanwhile


async def test_cancel_stops_the_generation_at_once_from_any_gateway(http, stack):
    s = Stream(3000)
    progress = Progress([s])
    task = asyncio.create_task(complete(http, stack.model, "cancel me", s, progress))
    await progress.all_have(5)
    async with http.post(f"{stack.urls[1]}/v1/streams/{s.response_id}/cancel") as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": s.response_id, "object": "stream", "status": "cancelled"}
    await asyncio.wait_for(task, 30)
    assert s.done and s.finish == "abort" and len(s.tokens) < 3000
    async with http.post(f"/v1/streams/{s.response_id}/cancel") as resp:
        assert (await resp.json())["status"] == "completed"


async def test_only_the_key_that_started_a_stream_may_resume_it(http, stack):
    gateway = stack.start("gateway-keys", "services.gateway", SLUICE_API_KEYS="key-a,key-b",
                          GATEWAY_ID="itest-3", GATEWAY_PORT="0")
    try:
        url = detail(gateway.ready_detail, "url")
        s = Stream(6)
        await complete(http, stack.model, "mine", s, url=url, headers={"Authorization": "Bearer key-a"})
        assert s.complete()
        other = Stream(6, request_id=s.request_id)
        assert await resume(http, other, url, headers={"Authorization": "Bearer key-b"}) == 404
        assert await resume(http, other, url) == 401
        mine = Stream(6, request_id=s.request_id)
        assert await resume(http, mine, url, headers={"Authorization": "Bearer key-a"}) == 200
        assert mine.tokens == s.tokens
        # A gateway without keys does not serve a stream that was started with one.
        assert await resume(http, Stream(6, request_id=s.request_id)) == 404
    finally:
        gateway.stop()


async def test_a_finished_stream_expires_after_the_retention_window(http, stack):
    gateway = stack.start("gateway-retention", "services.gateway", SLUICE_RESUME_RETENTION_S="2",
                          GATEWAY_ID="itest-4", GATEWAY_PORT="0")
    try:
        url = detail(gateway.ready_detail, "url")
        s = Stream(4)
        await complete(http, stack.model, "soon gone", s, url=url)
        assert await resume(http, Stream(4, request_id=s.request_id), url) == 200
        await asyncio.sleep(2.5)  # the window itself: time passing is the condition
        assert await resume(http, Stream(4, request_id=s.request_id), url) == 404
    finally:
        gateway.stop()
