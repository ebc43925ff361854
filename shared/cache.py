"""Redis: the token cache (cache server) and worker liveness (state server). Preprocessed
images live in shared.images, request claims in shared.claims, stream watches in
shared.watches; connections in shared.redisconn."""

from __future__ import annotations

import hashlib
from array import array

from redis.asyncio import Redis


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
    heartbeat, on Redis's clock (host clocks may disagree).

    A registry younger than one heartbeat period (`<prefix>:workers-since`: a Redis that
    restarted empty, or a new deployment) is incomplete: live workers have not all beaten
    into it yet, so it answers "unknown" rather than "none". So does a registry this process
    could not reach until less than a period ago: a Redis that hung (paused, or cut off)
    held every worker's heartbeats, and they have not all come in since."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: float) -> None:
        self._prefix = f"{prefix}:workers:"
        self._since = f"{prefix}:workers-since"
        self._ttl = ttl_s
        # KEYS: the route's set, since. ARGV: worker id.
        self._beat = redis.register_script(_NOW_S + _SINCE + """
return redis.call('ZADD', KEYS[1], now, ARGV[1])""")
        # KEYS: the route's set, since. ARGV: ttl. Workers silent for long are dropped; live
        # ones counted; -1 while the registry is too young to tell.
        self._live = redis.register_script(_NOW_S + _SINCE + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 6 * tonumber(ARGV[1]))
local live = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
if live == 0 and now - since < tonumber(ARGV[1]) then return -1 end
return live
""")
        self._redis = redis

    async def heartbeat(self, route: str, worker_id: str) -> None:
        await self._beat(keys=[self._prefix + route, self._since], args=[worker_id])

    async def remove(self, route: str, worker_id: str) -> None:
        await self._redis.zrem(self._prefix + route, worker_id)

    async def live(self, route: str) -> int | None:
        """Live workers of the route; None while the registry cannot tell yet."""
        count = int(await self._live(keys=[self._prefix + route, self._since], args=[self._ttl]))
        breaker = getattr(self._redis, "breaker", None)  # shared.redisconn's, if guarded
        if count < 0 or (count == 0 and breaker is not None and breaker.recovered_within(self._ttl)):
            return None
        return count


# KEYS[2]: when the registry began (Redis's clock, seconds); set by whoever comes first.
_SINCE = """local since = tonumber(redis.call('GET', KEYS[2]) or '0')
if since == 0 then since = now redis.call('SET', KEYS[2], now) end
"""
