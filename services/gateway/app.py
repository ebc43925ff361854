"""The gateway application factory: resources in cleanup contexts, typed state, routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from shared.bus import Publisher, assign_from_end, ensure_topics, kafka_consumer, kafka_producer
from shared.cache import WorkerRegistry, redis_client
from shared.claims import AbortMarks
from shared.settings import TopicSpec

from services.gateway.aborts import Aborter
from services.gateway.admission import Admission
from services.gateway.errors import auth_middleware, error_middleware
from services.gateway.handlers import add_routes
from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import ReplyRouter
from services.gateway.settings import GatewaySettings
from services.gateway.state import (
    ABORTER,
    ADMISSION,
    METRICS,
    PUBLISHER,
    REDIS,
    ROUTER,
    SETTINGS,
    STARTED,
)

log = logging.getLogger(__name__)


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with redis_client(settings.redis) as redis:
        app[REDIS] = redis
        app[ADMISSION] = Admission(settings.max_in_flight,
                                   WorkerRegistry(redis, settings.topics.prefix, settings.lease_s),
                                   app[METRICS])
        yield


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    reply_spec = TopicSpec(settings.reply_topic, settings.topics.reply_partitions)
    await ensure_topics(settings.kafka, [*settings.topics.core(settings.catalog.models), reply_spec])
    async with kafka_producer(settings.kafka, f"gateway-{settings.gateway_id}") as producer:
        app[PUBLISHER] = Publisher(producer)
        yield


async def _replies(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    spec = TopicSpec(settings.reply_topic, settings.topics.reply_partitions)
    async with kafka_consumer(settings.kafka, client_id=f"gateway-{settings.gateway_id}-replies",
                              group_id=None, fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms) as consumer:
        await assign_from_end(consumer, spec)
        router = app[ROUTER] = ReplyRouter(consumer, app[PUBLISHER], settings.topics.deadletter,
                                           app[METRICS])
        task = asyncio.create_task(router.run(), name="gateway-replies")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _aborts(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    aborter = app[ABORTER] = Aborter(app[PUBLISHER], AbortMarks(app[REDIS], settings.topics.prefix),
                                     settings.topics.aborts, app[METRICS],
                                     keep_ms=int(settings.request_timeout_s * 1000) + 60_000)
    yield
    await aborter.close()  # before the producer closes: cancelled streams' aborts go out


async def _drain(app: web.Application) -> None:
    if not await app[ADMISSION].drain(app[SETTINGS].drain_s):
        log.warning("drain deadline passed with %d requests in flight; they will be cancelled",
                    app[ADMISSION].in_flight)


def build_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, auth_middleware(settings.api_keys)],
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[STARTED] = time.time()
    app.cleanup_ctx.extend([_redis, _kafka, _replies, _aborts])
    app.on_shutdown.append(_drain)
    add_routes(app)
    return app
