"""Run one generation: publish the request, then stream or collect the replies."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from shared.bus import Meta, ReplyTo
from shared.contracts import GenerateRequest, needs_preprocess
from shared.errors import BusUnavailable, PayloadTooLarge, RemoteError, SluiceError, Unavailable
from shared.settings import ModelSpec

from services.gateway import streaming
from services.gateway.responses import Formatter
from services.gateway.state import (ABORTER, ADMISSION, METRICS, PUBLISHER, ROUTER, SETTINGS,
                                    WATCHER)


@dataclass(frozen=True, slots=True)
class Generation:
    wire: GenerateRequest
    spec: ModelSpec
    formatter: Formatter
    stream: bool
    traceparent: str
    endpoint: str
    reply_to: ReplyTo


async def run(request: web.Request, gen: Generation) -> web.StreamResponse:
    app = request.app
    settings, router, metrics = app[SETTINGS], app[ROUTER], app[METRICS]
    rid = gen.wire.request_id
    response: web.StreamResponse | None = None
    async with app[ADMISSION].admit(gen.spec.route):
        collector = router.open(rid)
        with app[WATCHER].reading(rid, gen.wire.grace_s or 0.0) as reading:
            try:
                await _publish(app, gen)
                started = time.monotonic()
                batches = collector.batches(settings.idle_timeout_s, gen.wire.deadline)
                # Errors before the first token (bad prompt, context too long) keep their status.
                first = await anext(batches)
                metrics.ttft.observe(time.monotonic() - started)
                answer = streaming.Answer(rid, collector, gen.formatter, gen.stream,
                                          headers={"traceparent": gen.traceparent})
                if gen.stream:
                    response = await streaming.prepare(request, answer)
                    await streaming.stream(request, response, answer, first, batches)
                else:
                    response = await streaming.collect(request, answer, first, batches)
                metrics.requests.labels(gen.endpoint, "200").inc()
                return response
            except (asyncio.CancelledError, GeneratorExit, ConnectionError):
                # The client went away: it may resume within the grace window, after which
                # (or at once, without one) the work stops all the way down to the engine.
                metrics.requests.labels(gen.endpoint, "499").inc()
                if not collector.over:
                    reading.left()
                raise
            except SluiceError as exc:
                metrics.requests.labels(gen.endpoint, str(exc.status)).inc()
                if isinstance(exc, BusUnavailable):
                    reading.cut()  # Kafka is away: the stream may be resumed once it is back
                elif not collector.finished and not isinstance(exc, RemoteError):
                    # A stage that replied with an error has stopped already; after a timeout
                    # or a lost reply the worker may still be generating: stop it.
                    app[ABORTER].abort(rid, type(exc).__name__)
                if response is not None:
                    return response  # already streaming: the error went out in-stream
                raise
            finally:
                router.close(rid)


async def _publish(app: web.Application, gen: Generation) -> None:
    """The request, stored within GATEWAY_PUBLISH_TIMEOUT_S (a streamed request's header
    travels in it: the worker writes it to the reply partition with the first reply)."""
    settings = app[SETTINGS]
    rid = gen.wire.request_id
    # Images go through preprocess first; text goes straight to the tokenizer.
    topic = settings.topics.preprocess if needs_preprocess(gen.wire.prompt) else settings.topics.requests
    try:
        async with asyncio.timeout(settings.publish_timeout_s):
            await app[PUBLISHER].send_and_wait(topic, gen.wire, Meta(rid, gen.reply_to, gen.traceparent))
    except MessageSizeTooLargeError as exc:
        raise PayloadTooLarge("The request is larger than the message bus accepts.") from exc
    except (KafkaError, TimeoutError) as exc:
        # It may still be stored later, with nobody waiting: make sure it does not run.
        app[ABORTER].abort(rid, "not_queued")
        raise Unavailable(f"could not queue the request: {type(exc).__name__}", retry_after=2) from exc
