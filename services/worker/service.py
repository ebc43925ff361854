"""The worker: consume TokenizedRequests for one model, generate with vLLM, stream deltas back.

Every request is claimed in Redis before it runs (shared.claims), and the worker keeps one
record of it (services.worker.ownership). A redelivered request whose claim is live is not
run again; one whose owner died (its lease lapsed, or it was released at shutdown) is
taken over and continued from the reply log (services.worker.run). The consumer-group
handler returns only when its request is settled, so an offset is committed only past
requests whose outcome is stored, by this worker or by the one that ran them.

Besides the group's partitions, each worker sweeps its model's lapsed leases
(services.worker.takeover), so a dead worker's running requests are taken over within
about SLUICE_LEASE_S, before Kafka moves its partitions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from shared.bus import (Meta, Publisher, assign_from_end, ensure_topics, kafka_consumer,
                        kafka_producer)
from shared.cache import WorkerRegistry
from shared.claims import Claims, Standing
from shared.consumer import GroupRunner, NotSettled
from shared.contracts import Codec, TokenizedRequest
from shared.images import ImageStore
from shared.lifecycle import freeze_heap, ready_line
from shared.redisconn import REDIS_ERRORS, level, redis_pair
from shared.replylog import LogReader
from shared.telemetry import child_traceparent, metrics_server
from shared.watches import Watches

from services.worker.aborts import listen_for_aborts
from services.worker.engine import client_error_types, engine_dead_error, open_engine
from services.worker.metrics import WorkerMetrics
from services.worker.ownership import Outcome, Owned, Ownership
from services.worker.run import REDIS_WAIT_S, Mode, Runner, RunnerDeps, expired, keep_ms
from services.worker.settings import WorkerSettings
from services.worker.takeover import Sweeper

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)


class EngineDied(RuntimeError):
    """The engine died: the worker handed its requests over and exits non-zero."""


class WorkerService:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics()
        # Unique per process, even when WORKER_ID is stable across restarts: a restarted
        # worker must not mistake its predecessor's claims for its own.
        self.owner = f"{settings.worker_id}/{secrets.token_hex(4)}"
        self._stopping = False
        self._engine_dead = asyncio.Event()
        self._codec = Codec(TokenizedRequest)
        self._claims: Claims
        self._watches: Watches
        self._ownership: Ownership
        self._runner: Runner
        self._sweeper: Sweeper
        self._engine: AsyncLLM
        self._publisher: Publisher

    @property
    def _poll_s(self) -> float:
        return self.settings.lease_s / 4

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            redis, cache = await stack.enter_async_context(redis_pair(s.redis))
            self._claims = Claims(redis, s.topics.prefix, s.model.route, self.owner, s.lease_s)
            self._watches = Watches(redis, s.topics.prefix)
            registry = WorkerRegistry(redis, s.topics.prefix, s.lease_s)
            await ensure_topics(s.kafka, s.topics.core((s.model,)))
            producer = await stack.enter_async_context(kafka_producer(s.kafka, s.worker_id))
            self._publisher = Publisher(producer)
            # The engine starts before we join the group, so no partition waits on a cold engine.
            self._engine = await stack.enter_async_context(open_engine(s))
            port = await stack.enter_async_context(
                metrics_server(self.metrics.registry, "127.0.0.1", s.metrics_port))
            log_consumer = await stack.enter_async_context(
                kafka_consumer(s.kafka, client_id=f"{s.worker_id}-log", group_id=None))
            replies = LogReader(log_consumer)
            abort_consumer = await stack.enter_async_context(
                kafka_consumer(s.kafka, client_id=f"{s.worker_id}-aborts", group_id=None))
            await assign_from_end(abort_consumer, s.topics.aborts_spec)
            consumer = await stack.enter_async_context(kafka_consumer(
                s.kafka, client_id=s.worker_id, group_id=s.group_id, auto_offset_reset="earliest",
                max_poll_interval_ms=600_000, session_timeout_ms=s.session_timeout_ms,
                heartbeat_interval_ms=max(s.session_timeout_ms // 3, 100)))
            self._ownership = Ownership(self._claims, s.lease_s, self._abort_in_engine)
            self._runner = Runner(RunnerDeps(
                settings=s, engine=self._engine, publisher=self._publisher, claims=self._claims,
                ownership=self._ownership, replies=replies, watches=self._watches,
                images=ImageStore(cache, s.topics.prefix),  # reads pixels only
                metrics=self.metrics, client_errors=client_error_types(),
                engine_dead=engine_dead_error(), on_engine_dead=self._engine_dead.set))
            runner = GroupRunner(
                consumer, s.topics.infer(s.model), self._codec, self.settle, self._publisher,
                s.topics.deadletter, name="worker", max_in_flight=s.max_in_flight,
                on_dead_letter=self.metrics.dead_letters.inc)
            runner.subscribe()
            await _quietly(registry.heartbeat(s.model.route, s.worker_id))  # seen before "ready"
            beat = asyncio.create_task(self._beat(registry), name="worker-beat")
            self._sweeper = Sweeper(self._claims, self._ownership, self._runner, replies, s.lease_s,
                                    s.max_in_flight, stopping=lambda: self._stopping)
            reaper = asyncio.create_task(self._sweeper.run(), name="worker-reaper")
            consume = asyncio.create_task(runner.run(), name="worker-consume")
            aborts = asyncio.create_task(
                listen_for_aborts(abort_consumer, self._abort, self._set_aside), name="worker-aborts")
            freeze_heap()
            log.info(ready_line("worker", f"pool={s.pool} model={s.model.name} metrics_port={port} "
                                          f"owner={self.owner}"))
            stopped = asyncio.create_task(stop.wait())
            dead = asyncio.create_task(self._engine_dead.wait())
            await asyncio.wait({beat, reaper, consume, aborts, stopped, dead},
                               return_when=asyncio.FIRST_COMPLETED)
            await self._shut_down(runner, registry, consume, reaper)
            for task in (beat, consume, reaper, aborts, stopped, dead):
                task.cancel()
            results = await asyncio.gather(beat, consume, reaper, aborts, return_exceptions=True)
            if self._engine_dead.is_set():
                raise EngineDied("the engine died; its requests were handed over")
            if not stop.is_set():
                failed = [r for r in results if isinstance(r, BaseException)
                          and not isinstance(r, asyncio.CancelledError)]
                raise RuntimeError(f"a worker loop died: {failed!r}")

    async def _shut_down(self, runner: GroupRunner, registry: WorkerRegistry,
                         consume: asyncio.Task, reaper: asyncio.Task) -> None:
        """Stop taking work and advertising; finish what runs within SLUICE_DRAIN_S (at once if
        the engine died), hand the rest over; leases and aborts keep flowing until then."""
        self._stopping = True
        runner.stop()
        reaper.cancel()
        await self._unregister(registry)
        # Our partitions move to the other workers at once; the requests running here stay
        # claimed by us, so their new owners wait for them rather than run them again.
        await _quietly(asyncio.wait_for(runner.leave(), 10))
        drain_s = 0 if self._engine_dead.is_set() else self.settings.drain_s
        if not await self._ownership.settled_within(drain_s):
            # Hand over whatever still runs, including takeovers that began meanwhile.
            deadline = asyncio.get_running_loop().time() + HANDOFF_S
            while len(self._ownership) and asyncio.get_running_loop().time() < deadline:
                if count := self._ownership.hand_over_all():
                    log.warning("handing %d running requests over to other workers", count)
                await self._ownership.settled_within(1.0)
        await self._sweeper.cancel()
        await runner.drain(5)  # handlers of handed-over requests leave their offsets uncommitted
        await self._unregister(registry)  # again: a heartbeat in flight may have re-added us

    async def _unregister(self, registry: WorkerRegistry) -> None:
        await _quietly(asyncio.wait_for(
            registry.remove(self.settings.model.route, self.settings.worker_id), REDIS_WAIT_S))

    # -- the group handler ---------------------------------------------------------------
    async def settle(self, req: TokenizedRequest, meta: Meta) -> None:
        """Return once the request is settled (its outcome stored, here or by whoever ran it);
        raise NotSettled when it was handed over and its offset must stay uncommitted."""
        rid = req.request_id
        meta = Meta(rid, meta.reply_to, child_traceparent(meta.traceparent), meta.origin)
        while True:
            owned = self._ownership.get(rid)
            if owned is not None:  # it runs here already (a redelivered copy): wait for it
                self.metrics.waited.inc()
                outcome = await asyncio.shield(owned.done)
            else:
                outcome = await self._handle(req, meta)
            if outcome is Outcome.SETTLED:
                return
            if self._stopping:
                raise NotSettled(rid)
            if outcome is Outcome.HANDED_OVER:
                await asyncio.sleep(self._poll_s)  # e.g. its error reply could not be stored

    async def _handle(self, req: TokenizedRequest, meta: Meta) -> Outcome:
        owned = self._ownership.open(req.request_id)
        outcome = Outcome.HANDED_OVER
        try:
            outcome = await self._claim_and_run(owned, req, meta)
        except Exception:
            # A bug, not bad input: the request stays unsettled (its claim lapses or was
            # released), to be tried again rather than committed past.
            log.exception("request %s failed in the worker", req.request_id)
            await self._runner.release(owned)
        finally:
            self._ownership.close(owned, outcome)
        return outcome

    async def _claim_and_run(self, owned: Owned, req: TokenizedRequest, meta: Meta) -> Outcome:
        if expired(req):
            return await self._runner.expired(owned, req, meta)
        loc = meta.origin
        keep = keep_ms(req)
        waiting = False
        while True:
            if self._stopping:  # a record polled just before the stop: leave it for the others
                return Outcome.HANDED_OVER
            asked_at = time.monotonic()
            claim = await self._ownership.acquire(req.request_id, loc, keep)
            if claim is None:  # without Redis, the reply log decides
                self._ownership.claimed(owned, 0, loc, keep, asked_at)
                return await self._runner.run(owned, req, meta, Mode.UNKNOWN)
            if claim.standing is Standing.DONE:
                return Outcome.SETTLED
            if claim.standing is not Standing.ACQUIRED:
                # Another worker's live lease: wait until it is done, or lapses (then take over).
                if not waiting:
                    waiting = True
                    self.metrics.waited.inc()
                await asyncio.sleep(self._poll_s)
                continue
            self._ownership.claimed(owned, claim.epoch, loc, keep, asked_at)
            owned.aborted = owned.aborted or claim.aborted
            if claim.takeover:
                mode = Mode.TAKEOVER
            elif claim.may_have_run(req.created):  # Redis restarted empty since it was made
                mode = Mode.CHECK
            else:
                mode = Mode.FRESH
            return await self._runner.run(owned, req, meta, mode)

    # -- liveness ------------------------------------------------------------------------
    async def _beat(self, registry: WorkerRegistry) -> None:
        """Advertise this worker, renew its leases, and watch its engine."""
        while True:
            if not self._stopping:
                try:
                    await asyncio.wait_for(
                        registry.heartbeat(self.settings.model.route, self.settings.worker_id),
                        REDIS_WAIT_S)
                except REDIS_ERRORS as exc:
                    log.log(level(exc), "heartbeat failed: %s", exc)
            await self._ownership.renew()
            self.metrics.abandoned.inc(await self._ownership.abandon_unwatched(self._watches))
            if self._engine.errored and not self._engine_dead.is_set():
                log.error("the engine is dead")
                self._engine_dead.set()
            await asyncio.sleep(self._poll_s)

    # -- aborts --------------------------------------------------------------------------
    async def _abort(self, request_id: str) -> None:
        if await self._ownership.abort(request_id):
            self.metrics.aborts.inc()
            log.info("aborting %s on the client's request", request_id)

    async def _abort_in_engine(self, engine_id: str) -> None:
        await self._engine.abort(engine_id)

    async def _set_aside(self, record, error: str) -> None:
        self.metrics.dead_letters.inc()
        try:
            await self._publisher.dead_letter(self.settings.topics.deadletter, record, error,
                                              "worker-aborts")
        except KafkaError:
            log.exception("could not dead-letter an abort message; dropped it")


HANDOFF_S = 60.0  # longest a shutdown waits for its handoffs (their last replies stored)


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as exc:
        log.warning("ignored: %s", exc)


def build_worker(settings: WorkerSettings) -> WorkerService:
    return WorkerService(settings)
