"""Takeover of lapsed leases: the running requests of a worker that stopped renewing its
leases (it died or hangs) or released them (shutdown, a dead engine) are continued here.

Every worker sweeps its model's lapsed leases every lease/4, so a dead worker's running
requests are taken over within about SLUICE_LEASE_S, before Kafka moves its partitions.
Each is claimed at the next epoch, read back from the request topic (its claim says where
the record is), its stream read from the reply log (one pass for the whole sweep), and
continued where the stream stands (services.worker.run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shared.bus import Meta, RecordLoc
from shared.claims import Claims, Standing
from shared.contracts import Codec, DecodeErrors, TokenizedRequest
from shared.redisconn import REDIS_ERRORS
from shared.replylog import LogQuery, LogReader, StreamProgress
from shared.telemetry import child_traceparent

from services.worker.ownership import Outcome, Owned, Ownership
from services.worker.run import LOG_ERRORS, REDIS_WAIT_S, Mode, Runner, keep_ms

log = logging.getLogger(__name__)

KEEP_MS = 3_600_000  # a claim's life until the request (and so its deadline) is read back


class Gone(Exception):
    """A lapsed request whose record cannot be read any more."""


class Sweeper:
    def __init__(self, claims: Claims, ownership: Ownership, runner: Runner, replies: LogReader,
                 lease_s: float, max_in_flight: int, stopping: Callable[[], bool]) -> None:
        self._claims = claims
        self._ownership = ownership
        self._runner = runner
        self._replies = replies
        self._lease_s = lease_s
        self._max_in_flight = max_in_flight
        self._stopping = stopping
        self._codec = Codec(TokenizedRequest)
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Take over this model's requests whose owner stopped renewing its lease."""
        while True:
            await asyncio.sleep(self._lease_s / 4)
            room = self._max_in_flight - len(self._ownership)
            if room <= 0:
                continue
            try:
                lapsed = await asyncio.wait_for(self._claims.lapsed(room), REDIS_WAIT_S)
            except REDIS_ERRORS:
                continue
            # Records first, with no await in between: a copy of one of these requests that
            # the group delivers meanwhile waits for this takeover instead of racing it.
            batch = [self._ownership.open(rid) for rid in lapsed if rid not in self._ownership]
            if batch:
                task = asyncio.create_task(self.take_over(batch), name="takeover")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def cancel(self) -> None:
        """At shutdown, after the handoffs: stop the takeovers still under way (their records
        are released)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def take_over(self, batch: list[Owned]) -> None:
        """Claim what lapsed, read the requests back, read their streams in one pass over
        the reply log, and continue each. A record this does not get as far as continuing
        (a bug, or shutdown cancelling it) is released and closed, never left held here
        with nothing running it."""
        left = {owned.request_id: owned for owned in batch}
        try:
            found = await asyncio.gather(*(self._claim(o) for o in batch), return_exceptions=True)
            ready: list[tuple[Owned, TokenizedRequest, Meta]] = []
            for owned, result in zip(batch, found):
                if isinstance(result, tuple):
                    ready.append((owned, *result))
                    continue
                if isinstance(result, BaseException):
                    log.error("takeover of %s failed", owned.request_id, exc_info=result)
                    result = await self._runner.release(owned)
                del left[owned.request_id]
                self._ownership.close(owned, result)
            if not ready:
                return
            try:
                stored = await self._replies.replies(
                    [LogQuery(r.request_id, m.reply_to, r.created) for _, r, m in ready
                     if m.reply_to is not None])
            except LOG_ERRORS as exc:
                log.warning("the reply log could not be read (%s); the takeovers wait", exc)
                stored = {}
            for owned, _, _ in ready:
                del left[owned.request_id]
            await asyncio.gather(*(self._continue(o, r, m, stored.get(r.request_id))
                                   for o, r, m in ready))
        finally:
            for owned in left.values():
                self._ownership.close(owned, Outcome.HANDED_OVER)
            await asyncio.gather(*(self._runner.release(o) for o in left.values()),
                                 return_exceptions=True)

    async def _claim(self, owned: Owned) -> Outcome | tuple[TokenizedRequest, Meta]:
        rid = owned.request_id
        if self._stopping():
            return Outcome.LOST
        asked_at = time.monotonic()
        claim = await self._ownership.acquire(rid, None, KEEP_MS)
        if claim is None or claim.standing is not Standing.ACQUIRED:
            return Outcome.SETTLED if claim and claim.standing is Standing.DONE else Outcome.LOST
        self._ownership.claimed(owned, claim.epoch, claim.loc, KEEP_MS, asked_at)
        owned.aborted = owned.aborted or claim.aborted
        try:
            found = await self._request_at(claim.loc)
        except Gone as gone:
            # Past retention (or never readable): nothing can answer it any more.
            log.warning("request %s: its lease lapsed but its record is gone (%s); dropped", rid, gone)
            try:
                await asyncio.wait_for(self._claims.finish(rid, claim.epoch, KEEP_MS), REDIS_WAIT_S)
            except REDIS_ERRORS as exc:
                log.warning("request %s: could not mark it done (%s)", rid, exc)
            return Outcome.SETTLED
        except LOG_ERRORS as exc:
            log.warning("request %s: its record could not be read now (%s)", rid, exc)
            return await self._runner.release(owned)
        owned.keep_ms = keep_ms(found[0])
        return found

    async def _continue(self, owned: Owned, req: TokenizedRequest, meta: Meta,
                        stored: StreamProgress | None) -> None:
        outcome = Outcome.HANDED_OVER
        try:
            meta = Meta(req.request_id, meta.reply_to, child_traceparent(meta.traceparent),
                        meta.origin)
            outcome = await self._runner.run(owned, req, meta, Mode.TAKEOVER, stored)
        except Exception:
            log.exception("takeover of %s failed", req.request_id)
            outcome = await self._runner.release(owned)
        finally:
            self._ownership.close(owned, outcome)

    async def _request_at(self, loc: RecordLoc | None) -> tuple[TokenizedRequest, Meta]:
        """The request record at `loc`; raises Gone when it cannot be had any more."""
        if loc is None:
            raise Gone("the claim names no record")
        record = await self._replies.record(loc.topic, loc.partition, loc.offset)
        if record is None:
            raise Gone(f"nothing at {loc.encode()}")
        try:
            return self._codec.decode(record.value), Meta.of_record(record)
        except (*DecodeErrors, ValueError) as exc:
            raise Gone(f"{loc.encode()} is not a request: {exc!r}") from None
