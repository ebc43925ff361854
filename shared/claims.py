"""Claims: which worker owns a running request, as leases in Redis.

A worker claims a request before it generates. The claim is a hash per request
(`<prefix>:claim:<rid>`: owner, epoch, state, where the request record is, and whether the
client gave up on it) and a lease per model route (`<prefix>:leases:<route>`, a sorted set
of request ids by lease expiry) that the owner's heartbeat renews. Redis's own clock
times the leases, so host clocks do not matter.

- A free request (no claim, a lapsed lease, or one released at shutdown) is acquired with
  the next epoch. Epoch 0 is a fresh run; a higher one a takeover, which continues the
  stream from the reply log.
- A request whose lease is live is not run again: its owner is `mine` or `elsewhere`.
- A finished request (its final reply or error stored in Kafka) is `done`; the mark lasts
  until the request's deadline has passed, after which no stage runs it anyway. Only the
  claim's holder (owner and epoch) marks it done or releases it.

Every change is one Lua script, so two workers cannot both acquire a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from redis.asyncio import Redis

from shared.bus import RecordLoc

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: claim, leases, since. ARGV: rid, me, lease_ms, loc, keep_ms.
# `since` is when this store began keeping claims: a Redis restarted empty starts again,
# and a request older than that may have run before without the store remembering it.
_ACQUIRE = _NOW + """
local since = redis.call('GET', KEYS[3])
if not since then since = now redis.call('SET', KEYS[3], now) end
local c = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'state', 'aborted', 'loc')
local owner, state, aborted, loc = c[1], c[3], c[4] or '', c[5] or ''
local epoch = tonumber(c[2] or '-1')
if state == 'done' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'done', epoch, owner or '', aborted, loc, since}
end
if owner and state == 'running' then
  local expiry = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
  if expiry > now then
    if owner == ARGV[2] then return {'mine', epoch, owner, aborted, loc, since} end
    return {'elsewhere', epoch, owner, aborted, loc, since}
  end
end
if ARGV[4] ~= '' then loc = ARGV[4] end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'epoch', epoch, 'state', 'running', 'loc', loc)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {'acquired', epoch, owner or '', aborted, loc, since}
"""

# KEYS: claim. ARGV: me, epoch, new epoch. The holder moves its claim to the epoch the reply
# log says comes next (when the store had forgotten an earlier run).
_REEPOCH = """
local c = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if c[1] == ARGV[1] and c[2] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3])
  return 1
end
return 0
"""

# KEYS: leases, claim... ARGV: me, lease_ms, then per claim: rid, epoch, loc, keep_ms.
# A claim that vanished (Redis restarted empty) is taken back as it was; one that finished
# meanwhile is left alone; one another worker holds now is lost.
_RENEW = _NOW + """
local lost = {}
for i = 2, #KEYS do
  local j = 3 + (i - 2) * 4
  local rid, epoch = ARGV[j], ARGV[j + 1]
  local c = redis.call('HMGET', KEYS[i], 'owner', 'epoch', 'state')
  if not c[1] then
    redis.call('HSET', KEYS[i], 'owner', ARGV[1], 'epoch', epoch, 'state', 'running', 'loc', ARGV[j + 2])
    redis.call('PEXPIRE', KEYS[i], ARGV[j + 3])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), rid)
  elseif c[1] == ARGV[1] and c[2] == epoch then
    if c[3] == 'running' then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), rid) end
  else
    table.insert(lost, rid)
  end
end
return lost
"""

# KEYS: claim, leases. ARGV: rid, me, epoch, keep_ms. Its outcome is stored: done, unless
# another worker holds the claim now (then the stream is that worker's to end).
_FINISH = """
local c = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if c[1] and not (c[1] == ARGV[2] and c[2] == ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: claim, leases. ARGV: rid, me, epoch. Hand the request over: its lease lapses now.
_RELEASE = """
local c = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'state')
if c[1] == ARGV[2] and c[2] == ARGV[3] and c[3] == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'released')
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  return 1
end
return 0
"""

# KEYS: leases. ARGV: limit.
_LAPSED = _NOW + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""

# KEYS: claim. ARGV: keep_ms. The client gave up: whoever claims the request answers at once.
_ABORT = """
redis.call('HSET', KEYS[1], 'aborted', '1')
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""


class Standing(Enum):
    ACQUIRED = "acquired"  # ours now, at `epoch` (0: a fresh run; higher: a takeover)
    MINE = "mine"  # this worker runs it already
    ELSEWHERE = "elsewhere"  # another worker's live lease
    DONE = "done"  # its outcome is stored


@dataclass(frozen=True, slots=True)
class Claim:
    standing: Standing
    epoch: int
    previous_owner: str  # for ACQUIRED: who held it before ("" for a fresh run)
    aborted: bool
    loc: RecordLoc | None
    since: float = 0.0  # unix seconds (Redis's clock) since when the store keeps claims

    @property
    def takeover(self) -> bool:
        return self.standing is Standing.ACQUIRED and self.epoch > 0

    def may_have_run(self, created: float, skew_s: float = 10.0) -> bool:
        """A fresh claim on a request created before the store began keeping claims (Redis
        restarted empty): an earlier run may be in the reply log."""
        return (self.standing is Standing.ACQUIRED and self.epoch == 0
                and created < self.since + skew_s)


@dataclass(frozen=True, slots=True)
class Held:
    """A claim this worker holds, as its renewal needs it."""

    request_id: str
    epoch: int
    loc: RecordLoc | None
    keep_ms: int


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Claims:
    def __init__(self, redis: Redis, prefix: str, route: str, owner: str, lease_s: float) -> None:
        self._claim = f"{prefix}:claim:"
        self._leases = f"{prefix}:leases:{route}"
        self._since = f"{prefix}:claims-since"
        self.owner = owner
        self._lease_ms = int(lease_s * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._finish = redis.register_script(_FINISH)
        self._release = redis.register_script(_RELEASE)
        self._lapsed = redis.register_script(_LAPSED)
        self._reepoch = redis.register_script(_REEPOCH)

    async def acquire(self, request_id: str, loc: RecordLoc | None, keep_ms: int) -> Claim:
        raw = await self._acquire(
            keys=[self._claim + request_id, self._leases, self._since],
            args=[request_id, self.owner, self._lease_ms, loc.encode() if loc else "", keep_ms])
        standing, epoch, owner, aborted, where, since = (_text(v) for v in raw)
        return Claim(Standing(standing), int(epoch), owner, aborted == "1", RecordLoc.decode(where),
                     int(since) / 1000)

    async def move_epoch(self, request_id: str, epoch: int, new_epoch: int) -> bool:
        return bool(await self._reepoch(keys=[self._claim + request_id],
                                        args=[self.owner, epoch, new_epoch]))

    async def renew(self, held: Sequence[Held]) -> set[str]:
        """Extend our leases; returns the requests we no longer own."""
        if not held:
            return set()
        args: list = [self.owner, self._lease_ms]
        for h in held:
            args += [h.request_id, h.epoch, h.loc.encode() if h.loc else "", h.keep_ms]
        lost = await self._renew(keys=[self._leases, *(self._claim + h.request_id for h in held)],
                                 args=args)
        return {_text(rid) for rid in lost}

    async def finish(self, request_id: str, epoch: int, keep_ms: int) -> bool:
        """Mark the request done (its outcome is stored), unless another worker holds it."""
        return bool(await self._finish(keys=[self._claim + request_id, self._leases],
                                       args=[request_id, self.owner, epoch, keep_ms]))

    async def release(self, request_id: str, epoch: int) -> bool:
        return bool(await self._release(keys=[self._claim + request_id, self._leases],
                                        args=[request_id, self.owner, epoch]))

    async def lapsed(self, limit: int = 64) -> list[str]:
        return [_text(rid) for rid in await self._lapsed(keys=[self._leases], args=[limit])]


class AbortMarks:
    """The gateway's side: a request whose client left. Whoever claims it next answers at once."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._claim = f"{prefix}:claim:"
        self._abort = redis.register_script(_ABORT)

    async def mark(self, request_id: str, keep_ms: int) -> None:
        await self._abort(keys=[self._claim + request_id], args=[keep_ms])
