"""The worker's one record of every request it handles: `Owned`, kept by `Ownership`.

A request gets its `Owned` before the worker asks Redis for the claim (shared.claims), so
an abort that arrives meanwhile is not missed, and keeps it until the request is settled
here: finished with its outcome stored in Kafka, handed over for another worker to
continue, or lost to another worker that took it over. Everything the worker knows about
a request is on that record: its claim (epoch, lease validity), the engine requests
running for it, whether the client gave up, and why the worker stopped it (`Stop`).

Leases are renewed for every claimed request in one Redis call, and the streams' watches
checked with it (a generation nobody reads any more is stopped). A reply goes out only
while the lease is certainly live (`confirm`): past that, the worker asks Redis first, so
a worker that was paused or cut off never writes into a stream another worker took over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from shared.claims import Claim, Claims, Held, RecordLoc
from shared.redisconn import REDIS_ERRORS, level
from shared.watches import Watches

log = logging.getLogger(__name__)

REDIS_WAIT_S = 1.0  # longest wait for a claim update (Redis's own timeout is usually shorter)
EARLY_ABORT_S = 600.0  # how long an abort of a request not here yet is remembered
EARLY_ABORTS = 100_000  # at most this many (the oldest go first)


class Stop(Enum):
    HANDOFF = "handoff"  # shutdown or a dead engine: flush, release the claim, someone continues
    DEADLINE = "deadline"  # the request's deadline passed: an error reply ends it
    FENCED = "fenced"  # our lease is gone: another worker owns the request; send nothing more


class Outcome(Enum):
    SETTLED = "settled"  # its outcome is stored in Kafka (here or by whoever ran it)
    HANDED_OVER = "handed_over"  # released: whoever claims it next continues it
    LOST = "lost"  # another worker took it over


class Fenced(Exception):
    """Our lease on the request lapsed and another worker holds it."""


@dataclass(eq=False)
class Owned:
    request_id: str
    done: asyncio.Future[Outcome]
    epoch: int = 0
    loc: RecordLoc | None = None
    keep_ms: int = 0
    claimed: bool = False  # the claim is ours: its lease is renewed
    valid_until: float = 0.0  # monotonic time until which our lease is certainly live
    aborted: bool = False  # the client gave up
    grace_s: float | None = None  # the request's (a gateway watches it: shared.watches)
    stop: Stop | None = None
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    engine_ids: list[str] = field(default_factory=list)

    def halt(self, stop: Stop) -> None:
        if self.stop is None:
            self.stop = stop
            self.interrupt.set()


class Ownership:
    def __init__(self, claims: Claims, lease_s: float,
                 engine_abort: Callable[[str], Awaitable[None]]) -> None:
        self._claims = claims
        self._lease_s = lease_s
        self._engine_abort = engine_abort
        self._owned: dict[str, Owned] = {}
        self._renewal: asyncio.Future[None] | None = None
        # Aborts of requests not here (yet): still queued, or on their way through the
        # tokenizer. The gateway also marks them in the claim; this covers Redis being away.
        self._early_aborts: OrderedDict[str, float] = OrderedDict()  # rid → monotonic expiry

    def __len__(self) -> int:
        return len(self._owned)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._owned

    def get(self, request_id: str) -> Owned | None:
        return self._owned.get(request_id)

    def open(self, request_id: str) -> Owned:
        """The request's record, new. Callers check `get` first with no await in between:
        a request has one record at a time."""
        if request_id in self._owned:
            raise RuntimeError(f"request {request_id} has a record already")
        owned = Owned(request_id, asyncio.get_running_loop().create_future())
        owned.aborted = self._early_aborts.pop(request_id, 0.0) > time.monotonic()
        self._owned[request_id] = owned
        return owned

    async def acquire(self, request_id: str, loc: RecordLoc | None, keep_ms: int) -> Claim | None:
        """Ask Redis for the request's claim (shared.claims); None when Redis cannot answer
        (the reply log then decides)."""
        try:
            return await asyncio.wait_for(self._claims.acquire(request_id, loc, keep_ms),
                                          REDIS_WAIT_S)
        except REDIS_ERRORS as exc:
            log.log(level(exc), "request %s: claims unavailable (%s); the reply log decides",
                    request_id, exc)
            return None

    def claimed(self, owned: Owned, epoch: int, loc: RecordLoc | None, keep_ms: int,
                asked_at: float) -> None:
        owned.epoch, owned.loc, owned.keep_ms, owned.claimed = epoch, loc, keep_ms, True
        owned.valid_until = asked_at + self._valid_s

    def close(self, owned: Owned, outcome: Outcome) -> None:
        if self._owned.get(owned.request_id) is owned:
            del self._owned[owned.request_id]
        if not owned.done.done():
            owned.done.set_result(outcome)

    @property
    def _valid_s(self) -> float:
        # A lease is live for lease_s from when it was asked for; keep a quarter in hand.
        return self._lease_s * 0.75

    async def abort(self, request_id: str) -> bool:
        """The client gave up. The engine ends the request with finish reason `abort`."""
        owned = self._owned.get(request_id)
        if owned is None:
            self._remember_abort(request_id)
            return False
        owned.aborted = True
        for engine_id in list(owned.engine_ids):
            await self._engine_abort(engine_id)
        return True

    def _remember_abort(self, request_id: str) -> None:
        now = time.monotonic()
        aborts = self._early_aborts
        aborts[request_id] = now + EARLY_ABORT_S
        aborts.move_to_end(request_id)
        while aborts and (len(aborts) > EARLY_ABORTS or next(iter(aborts.values())) <= now):
            aborts.popitem(last=False)

    def hand_over_all(self) -> int:
        running = [o for o in self._owned.values() if o.claimed and o.stop is None]
        for owned in running:
            owned.halt(Stop.HANDOFF)
        return len(running)

    async def settled_within(self, timeout: float) -> bool:
        """Wait until no request has a record here (records opened meanwhile included)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._owned:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.wait([o.done for o in self._owned.values()], timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)
        return True

    async def abandon_unwatched(self, watches: Watches) -> int:
        """Stop the generations nobody reads any more: their client left and did not resume
        within its grace window, or their gateway died (shared.watches). Returns how many."""
        entries = [(o.request_id, self._lease_s + o.grace_s) for o in self._owned.values()
                   if o.claimed and o.grace_s is not None and not o.aborted and o.stop is None]
        if not entries:
            return 0
        try:
            # For a lease after Redis comes back, the gateways (renewing every lease/4) catch up.
            expired = await asyncio.wait_for(watches.expired(entries, settle_s=self._lease_s),
                                             self._lease_s / 4)
        except REDIS_ERRORS:
            return 0  # without Redis, only explicit aborts stop a generation
        stopped = 0
        for rid in expired:
            if await self.abort(rid):
                stopped += 1
                log.info("abandoning %s: nobody has read its stream within its grace window", rid)
        return stopped

    def held(self) -> list[Owned]:
        """Claims to renew: every one still ours, including those being handed over (their
        last replies are stored before the release)."""
        return [o for o in self._owned.values() if o.claimed and o.stop is not Stop.FENCED]

    async def renew(self) -> None:
        """Renew every lease we hold (one renewal at a time; callers share it)."""
        if self._renewal is not None:
            await asyncio.shield(self._renewal)
            return
        self._renewal = asyncio.get_running_loop().create_future()
        try:
            await self._renew_now()
        finally:
            self._renewal.set_result(None)
            self._renewal = None

    async def _renew_now(self) -> None:
        held = self.held()
        if not held:
            return
        asked_at = time.monotonic()
        try:
            lost = await asyncio.wait_for(self._claims.renew(
                [Held(o.request_id, o.epoch, o.loc, o.keep_ms) for o in held]), self._lease_s / 4)
        except REDIS_ERRORS as exc:
            # Availability over fencing: with Redis down for every worker, nobody can take a
            # request over, and stopping would stall every stream. A worker cut off alone
            # while others take its requests over makes the gateway see two workers
            # disagree: it ends those streams with an error rather than mix them.
            log.log(level(exc), "lease renewal failed (%s); carrying on", exc)
            for owned in held:
                owned.valid_until = max(owned.valid_until, time.monotonic() + self._lease_s / 4)
            return
        for owned in held:
            if owned.request_id in lost:
                log.warning("request %s: our claim (epoch %d) was taken over; stopping it here",
                            owned.request_id, owned.epoch)
                owned.halt(Stop.FENCED)
            else:
                owned.valid_until = asked_at + self._valid_s

    async def confirm(self, owned: Owned) -> None:
        """Before a reply goes out: is the request still ours? Raises Fenced if not."""
        if owned.claimed and time.monotonic() >= owned.valid_until:
            await self.renew()
        if owned.stop is Stop.FENCED:
            raise Fenced(owned.request_id)
