"""Run one claimed request on the engine, fresh or continued, to its outcome.

- Fresh (epoch 0): the prompt as tokenized.
- Takeover (a higher epoch): the stream stored in the reply log so far is read back and
  continued (services.worker.continuation): same `seq`, same token positions, so the
  client's stream simply goes on.
- Unknown (Redis unavailable, so no claim): the log decides between the two.

How it ends:
- finished: the final reply is acknowledged by Kafka, then the claim is marked done;
- stopped for a handoff (shutdown, dead engine), or a reply that Kafka did not store:
  what the engine produced is sent (unless a send failed: the next owner continues from
  what is stored), its delivery awaited, and the claim released for another worker (or
  this one, later) to continue;
- deadline passed or an error: an error reply, acknowledged, ends the stream;
- fenced (the lease was lost): nothing more is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from shared.bus import Meta, Publisher
from shared.claims import Claims
from shared.contracts import StreamOpened, TokenizedRequest
from shared.errors import (DeadlineExceeded, InvalidRequest, SluiceError, Unavailable,
                           as_sluice_error, error_reply)
from shared.images import ImageStore
from shared.redisconn import REDIS_ERRORS, level
from shared.replylog import LogQuery, LogReader, StreamProgress
from shared.watches import Watches

from services.worker.continuation import EngineRequest, Plan, continued, fresh
from services.worker.images import engine_prompt
from services.worker.metrics import WorkerMetrics
from services.worker.ownership import REDIS_WAIT_S, Fenced, Outcome, Owned, Ownership, Stop
from services.worker.sampling import to_sampling_params
from services.worker.settings import WorkerSettings
from services.worker.sender import Sender
from services.worker.stream import Interrupted, ReplyStream, pump

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

DEFAULT_KEEP_MS = 3_600_000  # how long a done mark lasts for a request without a deadline
LOG_ERRORS = (KafkaError, TimeoutError, OSError)


class Mode(Enum):
    FRESH = "fresh"
    TAKEOVER = "takeover"
    CHECK = "check"  # a fresh claim the store may have forgotten a run of: the log decides
    UNKNOWN = "unknown"  # no claim (Redis unavailable): the reply log decides


@dataclass
class RunnerDeps:
    settings: WorkerSettings
    engine: AsyncLLM
    publisher: Publisher
    claims: Claims
    ownership: Ownership
    replies: LogReader
    watches: Watches
    images: ImageStore
    metrics: WorkerMetrics
    client_errors: tuple[type[Exception], ...]
    engine_dead: type[Exception]
    on_engine_dead: Callable[[], None]


class Runner:
    def __init__(self, deps: RunnerDeps) -> None:
        self._d = deps

    async def run(self, owned: Owned, req: TokenizedRequest, meta: Meta, mode: Mode,
                  progress: StreamProgress | None = None) -> Outcome:
        """`progress`: the stream as stored, when the caller read it already (a takeover)."""
        d = self._d
        rid = req.request_id
        owned.grace_s = req.grace_s
        stream = ReplyStream(rid, d.settings.worker_id, len(req.prompt_token_ids), req.sampling.n,
                             req.sampling.logprobs or 0, epoch=owned.epoch)
        plan = fresh(req)
        if mode is not Mode.FRESH:
            try:
                progress = progress or await self._stored(req, meta)
            except LOG_ERRORS as exc:  # try again later, here or elsewhere
                log.warning("request %s: its stored stream could not be read (%s)", rid, exc)
                return await self.release(owned)
            if progress.finished or progress.diverged:
                # Its end is stored (or the client was already told its stream failed).
                return await self._done(owned)
            if mode is Mode.UNKNOWN and progress.moved_within(d.settings.lease_s):
                # No claims to ask (Redis away): a stream that moved within the last lease
                # presumably runs elsewhere still (this is a copy redelivered by a rebalance).
                # Look again later; once it stops moving, its worker is gone: continue it.
                return Outcome.HANDED_OVER
            if mode in (Mode.CHECK, Mode.UNKNOWN) and progress.started:
                epoch = progress.epoch + 1  # after the run the log remembers
                if mode is Mode.CHECK and not await self._move_epoch(owned, epoch):
                    return await self.release(owned)
                owned.epoch = stream.epoch = epoch
            if progress.started:  # else nothing was sent: run it whole, as if fresh
                plan = self._continue(req, owned.epoch, stream, progress)
        # A run that starts the stream writes its header (for resumes) with its first message.
        sender = self._sender(owned, meta, req.opened if stream.seq == 0 else None)
        deadline = None
        try:
            if owned.aborted:  # the client left before this worker started
                d.metrics.aborts.inc()
                stream.finish("abort")
            if stream.finished:
                return await self._end(owned, sender, stream)
            if expired(req):
                raise DeadlineExceeded("the request's deadline passed before it reached the engine")
            if req.deadline is not None:
                loop = asyncio.get_running_loop()
                deadline = loop.call_at(loop.time() + req.deadline - time.time(), owned.halt,
                                        Stop.DEADLINE)
            if owned.stop is not None:  # stopped while its stream was read back
                raise Interrupted()
            d.metrics.in_flight.inc()
            try:
                await pump(self._outputs(owned, req, plan), stream, sender.send,
                           d.settings.coalesce_ms / 1000, owned.interrupt)
            finally:
                d.metrics.in_flight.dec()
            d.metrics.tokens.inc(stream.completion_tokens)
            d.metrics.requests.labels("ok").inc()
            # The final reply stored in Kafka before the claim is done and the offset committed.
            return await self._end(owned, sender, stream)
        except Interrupted:
            if owned.stop is Stop.FENCED:
                return self._lost()
            if owned.stop is Stop.DEADLINE:
                return await self._fail(owned, sender, stream, DeadlineExceeded(
                    "the request's deadline passed during generation"))
            return await self._hand_over(owned, sender, stream)
        except Fenced:
            return self._lost()
        except KafkaError as exc:
            log.warning("request %s: a reply could not be sent (%s); releasing it", rid, exc)
            return await self._hand_over(owned, sender, stream)
        except Exception as exc:
            if isinstance(exc, d.engine_dead):
                log.error("request %s: the engine died; handing it over", rid)
                d.on_engine_dead()
                return await self._hand_over(owned, sender, stream)
            return await self._fail(owned, sender, stream, self._as_error(rid, exc))
        finally:
            if deadline is not None:
                deadline.cancel()

    async def expired(self, owned: Owned, req: TokenizedRequest, meta: Meta) -> Outcome:
        """Answer a request whose deadline passed before it got here, without running it."""
        self._d.metrics.expired.inc()
        stream = ReplyStream(req.request_id, self._d.settings.worker_id, 0, req.sampling.n)
        return await self._fail(owned, self._sender(owned, meta), stream, DeadlineExceeded(
            "the request's deadline passed before a worker took it"))

    def _sender(self, owned: Owned, meta: Meta, header: StreamOpened | None = None) -> Sender:
        return Sender(self._d.publisher, self._d.ownership, self._d.metrics, owned, meta, header)

    # -- takeover ----------------------------------------------------------------------
    async def _stored(self, req: TokenizedRequest, meta: Meta) -> StreamProgress:
        if meta.reply_to is None:  # nobody reads its replies: nothing to continue
            return StreamProgress(req.request_id)
        query = LogQuery(req.request_id, meta.reply_to, req.created)
        return (await self._d.replies.replies([query]))[req.request_id]

    def _continue(self, req: TokenizedRequest, epoch: int, stream: ReplyStream,
                  progress: StreamProgress) -> Plan:
        stream.resume(progress.next_seq, {i: (len(c.token_ids), c.finish_reason)
                                          for i, c in progress.choices.items()})
        plan = continued(req, epoch, {i: c.token_ids for i, c in progress.choices.items()},
                         stream.unfinished())
        for index in plan.complete:
            stream.finish_choice(index, "length")
        self._d.metrics.takeovers.inc()
        log.info("request %s: continuing from message %d (%s tokens) at epoch %d", req.request_id,
                 progress.next_seq, [stream.num_tokens(i) for i in range(req.sampling.n)], epoch)
        return plan

    async def _move_epoch(self, owned: Owned, epoch: int) -> bool:
        try:
            return await asyncio.wait_for(
                self._d.claims.move_epoch(owned.request_id, owned.epoch, epoch), REDIS_WAIT_S)
        except REDIS_ERRORS as exc:
            log.log(level(exc), "request %s: could not move its claim to epoch %d (%s)",
                        owned.request_id, epoch, exc)
            return False

    # -- the engine ----------------------------------------------------------------------
    async def _outputs(self, owned: Owned, req: TokenizedRequest,
                       plan: Plan) -> AsyncIterator[tuple[Any, int | None]]:
        """The engine's outputs as (RequestOutput, choice) pairs, from one engine request or
        several (a continued stream with several choices)."""
        kind = "fresh" if owned.epoch == 0 else "takeover"
        gens = []
        for er in plan.requests:
            prompt = await engine_prompt(req, self._d.settings.model.vision, self._d.images, er.prefix)
            gens.append((er, self._generate(owned, er, prompt, kind)))
        if len(gens) == 1:
            er, gen = gens[0]
            async for out in gen:
                yield out, er.choice
            return
        async for item in _merge(gens):
            yield item

    async def _generate(self, owned: Owned, er: EngineRequest, prompt: dict,
                        kind: str) -> AsyncIterator[Any]:
        engine = self._d.engine
        owned.engine_ids.append(er.engine_id)
        self._d.metrics.admissions.labels(kind).inc()
        applied = False
        async for out in engine.generate(prompt, to_sampling_params(er.sampling), request_id=er.engine_id):
            yield out
            # An abort that raced the request's registration in the engine was a no-op there.
            if owned.aborted and not applied and not out.finished:
                applied = True
                await engine.abort(er.engine_id)

    # -- endings -------------------------------------------------------------------------
    async def _end(self, owned: Owned, sender: Sender, stream: ReplyStream) -> Outcome:
        """Send what the stream holds (its final message, if it is finished), then settle:
        done when everything is stored and the stream finished, else released."""
        try:
            if stream.pending and not sender.failed:  # after a failed send it would be a hole
                await sender.send(stream.take())
        except Fenced:
            return self._lost()
        except KafkaError as exc:
            log.warning("request %s: its last reply could not be sent (%s)", stream.request_id, exc)
        if stream.finished and await sender.stored():
            return await self._done(owned)
        return await self.release(owned)

    async def _hand_over(self, owned: Owned, sender: Sender, stream: ReplyStream) -> Outcome:
        """Send the tokens the engine produced (whoever continues does not generate them
        again), wait until they are stored, and release the claim."""
        outcome = await self._end(owned, sender, stream)
        if outcome is Outcome.HANDED_OVER:
            self._d.metrics.handoffs.inc()
            log.info("request %s handed over at message %d", owned.request_id, stream.seq)
        return outcome

    async def _fail(self, owned: Owned, sender: Sender, stream: ReplyStream,
                    exc: SluiceError) -> Outcome:
        self._d.metrics.requests.labels("error").inc()
        if stream.pending and not sender.failed:
            try:  # the tokens generated before the error (a deadline), then the error
                await sender.send(stream.take())
            except Fenced:
                return self._lost()
            except KafkaError:
                pass  # sender.failed: the error reply must not follow a hole
        if sender.failed:
            return await self.release(owned)
        reply = error_reply(exc, request_id=stream.request_id, source=stream.source,
                            seq=stream.seq, epoch=stream.epoch)
        try:
            await sender.send(reply)
        except Fenced:
            return self._lost()
        except KafkaError:
            pass
        if not await sender.stored():
            # Not stored: nobody was told. Release it, so that it is answered later.
            return await self.release(owned)
        return await self._done(owned)

    def _lost(self) -> Outcome:
        self._d.metrics.fenced.inc()
        return Outcome.LOST

    async def release(self, owned: Owned) -> Outcome:
        if owned.claimed:
            try:
                await asyncio.wait_for(self._d.claims.release(owned.request_id, owned.epoch),
                                       REDIS_WAIT_S)
            except REDIS_ERRORS as exc:  # its lease lapses by itself
                log.log(level(exc), "request %s: could not release its claim (%s)", owned.request_id, exc)
        return Outcome.HANDED_OVER

    async def _done(self, owned: Owned) -> Outcome:
        try:
            await asyncio.wait_for(self._d.claims.finish(
                owned.request_id, owned.epoch, owned.keep_ms or DEFAULT_KEEP_MS), REDIS_WAIT_S)
            if owned.grace_s is not None:
                await asyncio.wait_for(self._d.watches.forget(owned.request_id), REDIS_WAIT_S)
        except REDIS_ERRORS as exc:
            log.log(level(exc), "request %s: could not mark it done (%s)", owned.request_id, exc)
        return Outcome.SETTLED

    def _as_error(self, rid: str, exc: Exception) -> SluiceError:
        if isinstance(exc, SluiceError):
            return exc
        if isinstance(exc, RedisError):
            return Unavailable(f"the image store is unavailable: {exc}", retry_after=2)
        if isinstance(exc, self._d.client_errors):  # vLLM rejected a parameter combination
            return InvalidRequest(str(exc))
        log.error("generation of %s failed", rid, exc_info=exc)
        return as_sluice_error(exc)


def keep_ms(req: TokenizedRequest) -> int:
    """How long the request's claim is worth keeping: until its deadline has passed."""
    if req.deadline is None:
        return DEFAULT_KEEP_MS
    return max(int((req.deadline - time.time()) * 1000), 0) + 60_000


def expired(req: TokenizedRequest) -> bool:
    return req.deadline is not None and time.time() >= req.deadline


async def _merge(gens: list[tuple[EngineRequest, AsyncIterator[Any]]]
                 ) -> AsyncIterator[tuple[Any, int | None]]:
    """Interleave several engine streams as their outputs arrive (no queue in between)."""
    pending: dict[asyncio.Future, tuple[EngineRequest, AsyncIterator[Any]]] = {
        asyncio.ensure_future(anext(gen)): (er, gen) for er, gen in gens}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                er, gen = pending.pop(fut)
                try:
                    out = fut.result()
                except StopAsyncIteration:
                    continue
                yield out, er.choice
                pending[asyncio.ensure_future(anext(gen))] = (er, gen)
    finally:
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for _, gen in gens:
            await gen.aclose()
