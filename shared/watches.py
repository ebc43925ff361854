"""Watches: whether anybody still reads a stream, so that a generation nobody will read is
stopped, whichever component died.

One sorted set per deployment (`<prefix>:watch`, on the state server): request id → the
time (Redis's clock, ms) until which the stream counts as watched.

- A gateway serving a stream to a connected client (the one that took the request, or one
  a client resumed on) renews it every lease/4 to now + lease + grace.
- When that client disconnects, its gateway sets it to now + grace: the grace window in
  which a client may resume the stream on any gateway.
- A gateway that dies stops renewing: its streams expire lease + grace after its last
  renewal.
- The worker running a request checks its entry with every lease renewal and abandons the
  generation once the entry has expired. An entry that is missing (not written yet, or
  Redis restarted empty) is created as if just renewed, so a missing entry never stops a
  stream, yet an orphan is still stopped within lease + grace. Right after Redis answers
  again (it hung, or this process was cut off from it), no entry counts as expired for a
  while: the gateways' renewals held up meanwhile have not all come in yet.

Only requests that carry `grace_s` (those a gateway took) are watched.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: watch. ARGV: pairs of (rid, ms from now).
_SET = _NOW + """
for i = 1, #ARGV, 2 do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i]) end
return 1
"""

# KEYS: watch. ARGV: pairs of (rid, ms from now for a missing entry). Returns the expired.
# Entries left behind (a stream read again after its end, a request that never reached a
# worker) go 10 minutes after they ran out: a running stream's worker sees it run out first.
_CHECK = _NOW + """
local expired = {}
for i = 1, #ARGV, 2 do
  local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not until_ms then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
  elseif tonumber(until_ms) < now then
    table.insert(expired, ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 600000)
return expired
"""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Watches:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._key = f"{prefix}:watch"
        self._redis = redis
        self._set = redis.register_script(_SET)
        self._check = redis.register_script(_CHECK)

    async def hold(self, entries: Sequence[tuple[str, float]]) -> None:
        """The gateway's side: each stream counts as watched for this many more seconds."""
        if entries:
            args: list = []
            for rid, seconds in entries:
                args += [rid, int(seconds * 1000)]
            await self._set(keys=[self._key], args=args)

    async def expired(self, entries: Sequence[tuple[str, float]], settle_s: float = 0.0) -> set[str]:
        """The worker's side: which of these streams nobody watches any more. `entries` pairs
        each request with how long a missing entry counts as watched (lease + grace). For
        `settle_s` after this process found Redis again, none: the gateways' renewals held up
        by the outage may not have come in yet."""
        breaker = getattr(self._redis, "breaker", None)  # shared.redisconn's, if guarded
        if not entries or (breaker is not None and breaker.recovered_within(settle_s)):
            return set()
        args: list = []
        for rid, seconds in entries:
            args += [rid, int(seconds * 1000)]
        return {_text(rid) for rid in await self._check(keys=[self._key], args=args)}

    async def forget(self, request_id: str) -> None:
        """The stream ended: nothing to watch."""
        await self._redis.zrem(self._key, request_id)
