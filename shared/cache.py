"""Redis: the shared cache and state store (token cache, worker liveness). Preprocessed
images live in shared.images, request claims and abort marks in shared.claims."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from shared.settings import RedisSettings


@asynccontextmanager
async def redis_client(settings: RedisSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.url, socket_connect_timeout=settings.timeout_s,
                            socket_timeout=settings.timeout_s, health_check_interval=30)
    try:
        yield client
    finally:
        await client.aclose()


def content_key(*parts: bytes) -> str:
    """A stable hash of the content that determines a cached value."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


class TokenCache:
    """Token ids by content hash, stored packed (uint32) with a TTL."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:tok:"
        self._ttl = ttl_s

    async def get(self, key: str) -> list[int] | None:
        raw = await self._redis.get(self._prefix + key)
        if raw is None:
            return None
        ids = array("I")
        ids.frombytes(raw)
        return ids.tolist()

    async def put(self, key: str, ids: list[int]) -> None:
        await self._redis.set(self._prefix + key, array("I", ids).tobytes(), ex=self._ttl)


_NOW_S = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"


class WorkerRegistry:
    """Worker liveness per model route (`<pool>.<model>`): worker ids scored by their last
    heartbeat, on Redis's clock (host clocks may disagree)."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: float) -> None:
        self._prefix = f"{prefix}:workers:"
        self._ttl = ttl_s
        # KEYS: the route's set. ARGV: worker id.
        self._beat = redis.register_script(_NOW_S + "return redis.call('ZADD', KEYS[1], now, ARGV[1])")
        # KEYS: the route's set. ARGV: ttl. Workers silent for long are dropped; live ones counted.
        self._live = redis.register_script(_NOW_S + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 6 * tonumber(ARGV[1]))
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
""")
        self._redis = redis

    async def heartbeat(self, route: str, worker_id: str) -> None:
        await self._beat(keys=[self._prefix + route], args=[worker_id])

    async def remove(self, route: str, worker_id: str) -> None:
        await self._redis.zrem(self._prefix + route, worker_id)

    async def live(self, route: str) -> int:
        return int(await self._live(keys=[self._prefix + route], args=[self._ttl]))
