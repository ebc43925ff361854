"""Redis connections that never hold a request up for long.

Every command waits at most `REDIS_TIMEOUT_S` (250 ms by default); only a connection error
is retried, once and at once (a pooled connection to a server that restarted). After
a failure the connection is presumed down: its pooled connections are dropped and commands
fail at once (RedisDown) until a background ping gets an answer again, so a Redis that
hangs (paused, or cut off by the network) costs the first request that meets it one
timeout, and the others nothing.

Two connections, by what their keys are for (shared.settings.RedisSettings):
- state (`REDIS_URL`): claims, leases, watches, the worker registry. Correctness depends on
  these, so that instance must never evict (`maxmemory-policy noeviction`); it stays small
  because claims expire after their request's deadline and the shared sets are pruned.
- cache (`REDIS_CACHE_URL`, by default the same server): token ids and preprocessed
  images, which can be made again; that instance may evict (`allkeys-lru`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared.settings import RedisSettings

log = logging.getLogger(__name__)

PROBE_S = 0.5  # how often a connection presumed down is tried again

# What a call that could not reach Redis raises; callers that degrade catch these.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RedisDown(RedisConnectionError):
    """Redis was unreachable a moment ago: the command was not sent."""


def level(exc: BaseException) -> int:
    """The log level for a failed Redis call: the breaker has said Redis is down already, so
    the calls it refused since are not worth a warning each."""
    return logging.DEBUG if isinstance(exc, RedisDown) else logging.WARNING


class Breaker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None
        self.recovered_at: float | None = None  # monotonic: when it last answered again
        self._woken = asyncio.Event()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def check(self) -> None:
        if self.down_since is not None:
            raise RedisDown(f"Redis ({self.name}) is unreachable")

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            log.warning("Redis (%s) unreachable (%s); skipping it until it answers", self.name,
                        type(exc).__name__)
            self.down_since = time.monotonic()
            self._woken.set()

    def recovered(self) -> None:
        if self.down_since is not None:
            log.info("Redis (%s) answers again after %.1fs", self.name,
                     time.monotonic() - self.down_since)
            self.down_since = None
            self.recovered_at = time.monotonic()

    def recovered_within(self, seconds: float) -> bool:
        return self.recovered_at is not None and time.monotonic() - self.recovered_at < seconds

    async def wait_down(self) -> None:
        self._woken.clear()
        if self.down_since is None:
            await self._woken.wait()


def _failure(exc: BaseException) -> bool:
    """A failure of the connection, not of the command (a script error, a wrong type)."""
    return isinstance(exc, (RedisConnectionError, TimeoutError, OSError)) or (
        isinstance(exc, RedisError) and "timeout" in type(exc).__name__.lower())


class GuardedRedis(Redis):
    breaker: Breaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.breaker.check()
        try:
            return await super().execute_command(*args, **options)
        except BaseException as exc:
            if _failure(exc):
                self.breaker.failed(exc)
            raise

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = GuardedPipeline(self.connection_pool, self.response_callbacks, transaction,
                               shard_hint)
        pipe.breaker = self.breaker
        return pipe

    async def _probe(self) -> None:
        while True:
            await self.breaker.wait_down()
            # Every pooled connection is suspect (to a server that restarted, each would fail
            # once and trip the breaker again): start afresh.
            await self.connection_pool.disconnect()
            while self.breaker.down:
                await asyncio.sleep(PROBE_S)
                try:
                    await Redis.execute_command(self, "PING")
                    self.breaker.recovered()
                except REDIS_ERRORS:
                    pass


class GuardedPipeline(Pipeline):
    breaker: Breaker

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.breaker.check()
        try:
            return await super().execute(raise_on_error)
        except BaseException as exc:
            if _failure(exc):
                self.breaker.failed(exc)
            raise


@asynccontextmanager
async def redis_client(url: str, timeout_s: float, name: str = "state") -> AsyncIterator[Redis]:
    # One immediate retry, on a connection error only: a pooled connection to a server that
    # restarted fails once ("closed by server") and a fresh one works. A timeout is never
    # retried: a hung server must cost one timeout, not several.
    client = GuardedRedis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    client.breaker = Breaker(name)
    probe = asyncio.create_task(client._probe(), name=f"redis-probe-{name}")
    try:
        yield client
    finally:
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
        await client.aclose()


@asynccontextmanager
async def redis_pair(settings: RedisSettings) -> AsyncIterator[tuple[Redis, Redis]]:
    """(state, cache); one connection when both name the same server."""
    async with redis_client(settings.url, settings.timeout_s, "state") as state:
        if settings.cache_url == settings.url:
            yield state, state
            return
        async with redis_client(settings.cache_url, settings.timeout_s, "cache") as cache:
            yield state, cache
