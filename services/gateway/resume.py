"""Resumable streams, on any gateway replica.

    GET  /v1/streams/{id}         the stream's events after `Last-Event-ID` (or the query
                                  parameter `starting_after`), then `[DONE]`; without
                                  either, the whole stream from its start
    POST /v1/streams/{id}/cancel  stop its generation now

`{id}` is the response's `id` (`chatcmpl-…` or `cmpl-…`). The id names the stream's reply
partition and creation time (shared.streamid), so the stream is read back from the reply
log (services.gateway.follower), its header (StreamOpened) first: which endpoint and model
it was, and who started it. While the client reads, the stream counts as watched, so its
generation goes on (services.gateway.watching). A stream can be resumed while it runs and
for SLUICE_RESUME_RETENTION_S after its end; an unknown or expired id, or one started with
another API key, gets a 404.
"""

from __future__ import annotations

import asyncio
import re
import time

from aiohttp import web
from aiokafka.errors import KafkaError

from shared.errors import (BusUnavailable, InvalidRequest, RemoteError, SluiceError, StreamNotFound,
                           Unavailable)
from shared.streamid import parse_response_id

from services.gateway import streaming
from services.gateway.errors import key_owner
from services.gateway.follower import Following
from services.gateway.replies import Collector
from services.gateway.responses import Formatter
from services.gateway.settings import GatewaySettings
from services.gateway.state import ABORTER, ADMISSION, FOLLOWER, METRICS, SETTINGS, WATCHER

LAST_EVENT_ID = "Last-Event-ID"
STARTING_AFTER = "starting_after"
READ_BACK_S = 10.0  # longest wait to read a stream back from the log (then 503)
CLOCK_SKEW_MS = 60_000  # between the gateway that made an id and this one
_EVENT_ID = re.compile(r"[0-9]{1,18}")
_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-"}  # as the response's id has it


def last_event(request: web.Request) -> int:
    """The last event the client has (-1: none, so the whole stream)."""
    raw, param = request.headers.get(LAST_EVENT_ID), LAST_EVENT_ID
    if raw is None:
        raw, param = request.query.get(STARTING_AFTER), STARTING_AFTER
    if raw is None or not raw.strip():
        return -1
    if not _EVENT_ID.fullmatch(raw.strip()):
        raise InvalidRequest(f"{param} must be the id of an event of this stream (a non-negative "
                             f"integer), got {raw[:40]!r}", param=param)
    return int(raw)


def _not_found(stream_id: str) -> StreamNotFound:
    return StreamNotFound(f"No stream found with id '{stream_id[:80]}'; it may have expired.",
                          param="id")


async def _read_back(request: web.Request) -> Following:
    """The stream, read back up to what the log holds now; 404 unless it exists, is not
    expired, and was started with this request's key."""
    app, stream_id = request.app, request.match_info["id"]
    settings = app[SETTINGS]
    key = parse_response_id(stream_id)
    if key is None or not _may_exist(key.created_ms, settings):
        raise _not_found(stream_id)
    follower = app[FOLLOWER]
    try:
        following = await asyncio.wait_for(follower.open(key), READ_BACK_S)
    except (KafkaError, TimeoutError) as exc:
        raise Unavailable(f"the reply log cannot be read now: {type(exc).__name__}",
                          retry_after=2) from exc
    if following is None:
        raise _not_found(stream_id)
    try:
        try:
            await asyncio.wait_for(following.collector.caught_up.wait(), READ_BACK_S)
        except TimeoutError:
            raise Unavailable("the reply log cannot be read now", retry_after=2) from None
        opened = following.collector.opened
        if (opened is None or not stream_id.startswith(_PREFIX[opened.endpoint])
                or opened.owner != key_owner(request, settings.api_keys)
                or _expired(following.collector, settings.topics.resume_retention_s)):
            raise _not_found(stream_id)
        return following
    except BaseException:
        follower.close(following)
        raise


def _may_exist(created_ms: int, settings: GatewaySettings) -> bool:
    """Whether a stream made then can still be resumed: it ended by its deadline, and stays
    resumable for the retention window after that. Older (or future) ids are not looked
    up: reading a partition back from long ago would cost every resume on it."""
    now_ms = time.time() * 1000
    oldest = now_ms - (settings.request_timeout_s + settings.topics.resume_retention_s) * 1000
    return oldest - CLOCK_SKEW_MS <= created_ms <= now_ms + CLOCK_SKEW_MS


def _expired(collector: Collector, retention_s: float) -> bool:
    now_ms = time.time() * 1000
    if collector.ended_ms is not None:
        return now_ms - collector.ended_ms > retention_s * 1000
    deadline = collector.opened.deadline if collector.opened else None
    return deadline is not None and now_ms > (deadline + retention_s) * 1000


async def resume(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, metrics = app[SETTINGS], app[METRICS]
    after = last_event(request)
    async with app[ADMISSION].admit(None):
        started = time.monotonic()
        following = await _read_back(request)
        collector = following.collector
        opened = collector.opened
        assert opened is not None
        response: web.StreamResponse | None = None
        try:
            with app[WATCHER].reading(opened.request_id, settings.resume_grace_s) as reading:
                if not collector.over:  # before its grace runs out, not at the next renewal
                    await app[WATCHER].hold_now(opened.request_id, settings.resume_grace_s)
                answer = streaming.Answer(opened.request_id, collector, Formatter.for_stream(opened),
                                          True, after=after)
                try:
                    batches = collector.batches(settings.idle_timeout_s, opened.deadline)
                    first = await anext(batches)  # an error before any token keeps its status
                    response = await streaming.prepare(request, answer)
                    metrics.resumes.labels("ok").inc()
                    metrics.resume_latency.observe(time.monotonic() - started)
                    await streaming.stream(request, response, answer, first, batches)
                    return response
                except (asyncio.CancelledError, GeneratorExit, ConnectionError):
                    if not collector.over:
                        reading.left()
                    raise
                except SluiceError as exc:
                    if response is None:
                        metrics.resumes.labels("error").inc()
                    if isinstance(exc, BusUnavailable):
                        reading.cut()  # resumable again once Kafka is back
                    elif not collector.finished and not isinstance(exc, RemoteError):
                        reading.left()  # e.g. no reply for long: the client may try again
                    if response is not None:
                        return response  # the error went out in-stream
                    raise
        finally:
            app[FOLLOWER].close(following)


async def cancel(request: web.Request) -> web.Response:
    app = request.app
    async with app[ADMISSION].admit(None):
        following = await _read_back(request)
        try:
            collector = following.collector
            if collector.finished:
                status = "completed"
            elif collector.error is not None and not isinstance(collector.error, BusUnavailable):
                status = "failed"
            else:
                status = "cancelled"
                app[ABORTER].abort(following.key.request_id, "cancelled")
            return web.json_response({"id": request.match_info["id"], "object": "stream",
                                      "status": status})
        finally:
            app[FOLLOWER].close(following)


def add_resume_routes(app: web.Application) -> None:
    app.router.add_get("/v1/streams/{id}", resume)
    app.router.add_post("/v1/streams/{id}/cancel", cancel)
