"""The gateway application factory: resources in cleanup contexts, typed state, routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiokafka import TopicPartition
from redis.asyncio import Redis

from shared.bus import Publisher, ensure_topics, kafka_consumer, kafka_producer
from shared.cache import WorkerRegistry
from shared.claims import AbortMarks
from shared.errors import SluiceError
from shared.redisconn import REDIS_ERRORS, redis_client
from shared.watches import Watches

from services.gateway.aborts import Aborter
from services.gateway.admission import Admission
from services.gateway.errors import auth_middleware, error_middleware
from services.gateway.follower import Follower
from services.gateway.handlers import add_routes
from services.gateway.health import KafkaHealth
from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import ReplyRouter
from services.gateway.resume import add_resume_routes
from services.gateway.settings import GatewaySettings
from services.gateway.state import (
    ABORTER,
    ADMISSION,
    FOLLOWER,
    HEALTH,
    HOME,
    METRICS,
    PUBLISHER,
    REDIS,
    REPLY_PARTITIONS,
    ROUTER,
    SETTINGS,
    STARTED,
    WATCHER,
)
from services.gateway.watching import Watcher

log = logging.getLogger(__name__)


async def _stopped(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _redis(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with redis_client(settings.redis.url, settings.redis.timeout_s) as redis:
        app[REDIS] = redis
        task = asyncio.create_task(_keep_in_touch(redis, settings.lease_s / 4), name="redis-ping")
        yield
        await _stopped(task)


async def _keep_in_touch(redis: Redis, every_s: float) -> None:
    """A ping now and then, so that even an idle gateway learns of a Redis outage: right
    after one, the worker registry is stale (shared.cache.WorkerRegistry)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await redis.ping()
        except REDIS_ERRORS:
            pass


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await ensure_topics(settings.kafka, settings.topics.core(settings.catalog.models))
    async with kafka_producer(settings.kafka, f"gateway-{settings.gateway_id}") as producer:
        app[PUBLISHER] = Publisher(producer)
        count = app[REPLY_PARTITIONS] = len(await producer.partitions_for(settings.reply_topic))
        app[HOME] = tuple(sorted({p % count for p in settings.home_partitions}))

        def outage(exc: SluiceError) -> None:  # every open stream ends
            for collector in (*app[ROUTER].collectors(), *app[FOLLOWER].collectors()):
                collector.fail(exc)

        health = app[HEALTH] = KafkaHealth(app[PUBLISHER], settings.kafka_unreachable_s,
                                           settings.kafka_outage_s, outage)
        app[ADMISSION] = Admission(settings.max_in_flight,
                                   WorkerRegistry(app[REDIS], settings.topics.prefix, settings.lease_s),
                                   health, app[METRICS])
        task = asyncio.create_task(health.run(), name="gateway-kafka-health")
        yield
        await _stopped(task)


async def _replies(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with kafka_consumer(settings.kafka, client_id=f"gateway-{settings.gateway_id}-replies",
                              group_id=None, fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms) as consumer:
        tps = [TopicPartition(settings.reply_topic, p) for p in app[HOME]]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve now, so nothing published after this is missed
        log.info("reading reply partitions %s of %s", app[HOME], settings.reply_topic)
        router = app[ROUTER] = ReplyRouter(consumer, app[PUBLISHER], settings.topics.deadletter,
                                           app[METRICS])
        task = asyncio.create_task(router.run(), name="gateway-replies")
        yield
        await _stopped(task)


async def _follower(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Short fetch waits: this consumer only fetches while a resumed stream is being read.
    async with kafka_consumer(settings.kafka, client_id=f"gateway-{settings.gateway_id}-resume",
                              group_id=None, fetch_max_wait_ms=100) as consumer:
        # Metadata and connections now, not on the first resume (~100 ms).
        await consumer.end_offsets([TopicPartition(settings.reply_topic, p)
                                    for p in range(app[REPLY_PARTITIONS])])
        follower = app[FOLLOWER] = Follower(consumer, settings.reply_topic, app[REPLY_PARTITIONS],
                                            app[METRICS])
        task = asyncio.create_task(follower.run(), name="gateway-follower")
        yield
        await _stopped(task)


async def _aborts(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    aborter = app[ABORTER] = Aborter(app[PUBLISHER], AbortMarks(app[REDIS], settings.topics.prefix),
                                     settings.topics.aborts, app[METRICS],
                                     keep_ms=int(settings.request_timeout_s * 1000) + 60_000)
    yield
    await aborter.close()  # before the producer closes: cancelled streams' aborts go out


async def _watcher(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    health = app[HEALTH]
    watcher = app[WATCHER] = Watcher(Watches(app[REDIS], settings.topics.prefix), app[ABORTER],
                                     settings.lease_s, bus_reachable=lambda: health.reachable)
    task = asyncio.create_task(watcher.run(), name="gateway-watches")
    yield
    await _stopped(task)
    await watcher.close()


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
    app.cleanup_ctx.extend([_redis, _kafka, _replies, _follower, _aborts, _watcher])
    app.on_shutdown.append(_drain)
    add_routes(app)
    add_resume_routes(app)
    return app
