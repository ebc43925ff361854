"""Run one generation: publish the request, then stream or collect the replies."""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from shared.bus import Meta, ReplyTo
from shared.contracts import GenerateRequest, TokenDelta, needs_preprocess
from shared.errors import PayloadTooLarge, RemoteError, SluiceError, Unavailable
from shared.settings import ModelSpec

from services.gateway.errors import error_body
from services.gateway.responses import Formatter, error_event
from services.gateway.state import ABORTER, ADMISSION, METRICS, PUBLISHER, ROUTER, SETTINGS


@dataclass(frozen=True, slots=True)
class Generation:
    wire: GenerateRequest
    spec: ModelSpec
    formatter: Formatter
    stream: bool
    traceparent: str
    endpoint: str


async def run(request: web.Request, gen: Generation) -> web.StreamResponse:
    app = request.app
    settings, router, metrics = app[SETTINGS], app[ROUTER], app[METRICS]
    rid = gen.wire.request_id
    response: web.StreamResponse | None = None
    async with app[ADMISSION].admit(gen.spec.route):
        collector = router.open(rid)
        try:
            await _publish(app, gen)
            started = time.monotonic()
            batches = collector.batches(settings.idle_timeout_s, gen.wire.deadline)
            # Errors before the first token (bad prompt, context too long) keep their status code.
            first = await anext(batches)
            metrics.ttft.observe(time.monotonic() - started)
            if gen.stream:
                response = await _prepare(request, gen)
                await _stream(request, response, gen, first, batches)
            else:
                response = await _collect(request, gen, first, batches)
            metrics.requests.labels(gen.endpoint, "200").inc()
            return response
        except (asyncio.CancelledError, GeneratorExit, ConnectionError):
            # The client went away: stop the work all the way down to the engine.
            metrics.requests.labels(gen.endpoint, "499").inc()
            if not collector.finished:
                app[ABORTER].abort(rid, "client_disconnected")
            raise
        except SluiceError as exc:
            metrics.requests.labels(gen.endpoint, str(exc.status)).inc()
            # A stage that replied with an error has stopped already; after a timeout or a
            # lost reply the worker may still be generating: stop it.
            if not collector.finished and not isinstance(exc, RemoteError):
                app[ABORTER].abort(rid, type(exc).__name__)
            if response is not None:
                return response  # already streaming: the error went out in-stream
            raise
        finally:
            router.close(rid)


async def _publish(app: web.Application, gen: Generation) -> None:
    settings = app[SETTINGS]
    rid = gen.wire.request_id
    reply_to = ReplyTo(settings.reply_topic, zlib.crc32(rid.encode()) % settings.topics.reply_partitions)
    try:
        # Images go through preprocess first; text goes straight to the tokenizer.
        topic = settings.topics.preprocess if needs_preprocess(gen.wire.prompt) else settings.topics.requests
        await app[PUBLISHER].send_and_wait(topic, gen.wire,
                                           Meta(rid, reply_to, gen.traceparent))
    except MessageSizeTooLargeError as exc:
        raise PayloadTooLarge("The request is larger than the message bus accepts.") from exc
    except KafkaError as exc:
        raise Unavailable(f"could not queue the request: {type(exc).__name__}", retry_after=2) from exc


def _headers(gen: Generation) -> dict[str, str]:
    return {"X-Request-Id": gen.wire.request_id, "traceparent": gen.traceparent}


async def _prepare(request: web.Request, gen: Generation) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        **_headers(gen), "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    return response


async def _stream(request: web.Request, response: web.StreamResponse, gen: Generation,
                  first: list[TokenDelta], batches) -> None:
    metrics = request.app[METRICS]
    fmt = gen.formatter
    try:
        batch = first
        while True:
            # One write per batch of deltas: SSE events are joined, not written one by one.
            await response.write(b"".join(fmt.chunks(d) for d in batch))
            metrics.completion_tokens.inc(_tokens(batch))
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                break
        await response.write(fmt.tail())
    except SluiceError as exc:
        # Headers are gone already: the error travels as an SSE event, then [DONE].
        await response.write(error_event(error_body(exc)))
        raise
    finally:
        await batches.aclose()
    await response.write_eof()


def _tokens(batch: list[TokenDelta]) -> int:
    return sum(len(c.token_ids) for d in batch for c in d.choices)


def _absorb(fmt: Formatter, batch: list[TokenDelta]) -> int:
    for delta in batch:
        fmt.add(delta)
    return _tokens(batch)


async def _collect(request: web.Request, gen: Generation, first: list[TokenDelta],
                   batches) -> web.Response:
    fmt = gen.formatter
    n_tokens = _absorb(fmt, first)
    async for batch in batches:
        n_tokens += _absorb(fmt, batch)
    request.app[METRICS].completion_tokens.inc(n_tokens)
    return web.Response(body=orjson.dumps(fmt.response()), content_type="application/json",
                        headers=_headers(gen))
