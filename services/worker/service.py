"""The worker: consume TokenizedRequests for one pool, generate with vLLM, stream deltas back."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from collections.abc import AsyncIterator

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from shared.bus import Meta, Publisher, assign_from_end, ensure_topics, kafka_consumer, kafka_producer
from shared.cache import AbortMarks, WorkerRegistry, redis_client
from shared.consumer import GroupRunner
from shared.contracts import Codec, TokenDelta, TokenizedRequest
from shared.errors import InvalidRequest, SluiceError, Unavailable, error_reply
from shared.images import ImageStore
from shared.lifecycle import freeze_heap, ready_line
from shared.telemetry import child_traceparent, metrics_server

from services.worker.aborts import RecentIds, listen_for_aborts
from services.worker.engine import client_error_types, open_engine
from services.worker.images import engine_prompt
from services.worker.metrics import WorkerMetrics
from services.worker.sampling import to_sampling_params
from services.worker.settings import WorkerSettings
from services.worker.stream import ReplyStream, pump

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)


class WorkerService:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics()
        self._handling: set[str] = set()  # requests this worker is answering
        self._active: set[str] = set()  # the subset registered with the engine
        self._aborted = RecentIds()
        self._engine: AsyncLLM
        self._publisher: Publisher
        self._marks: AbortMarks
        self._images: ImageStore
        self._client_errors: tuple[type[Exception], ...] = (ValueError,)

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            redis = await stack.enter_async_context(redis_client(s.redis))
            self._marks = AbortMarks(redis, s.topics.prefix)
            self._images = ImageStore(redis, s.topics.prefix)  # reads pixels only
            registry = WorkerRegistry(redis, s.topics.prefix)
            await ensure_topics(s.kafka, s.topics.core((s.model,)))
            producer = await stack.enter_async_context(kafka_producer(s.kafka, s.worker_id))
            self._publisher = Publisher(producer)
            # The engine starts before we join the group, so no partition waits on a cold engine.
            self._engine = await stack.enter_async_context(open_engine(s))
            self._client_errors = client_error_types()
            port = await stack.enter_async_context(
                metrics_server(self.metrics.registry, "127.0.0.1", s.metrics_port))
            abort_consumer = await stack.enter_async_context(
                kafka_consumer(s.kafka, client_id=f"{s.worker_id}-aborts", group_id=None))
            await assign_from_end(abort_consumer, s.topics.aborts_spec)
            consumer = await stack.enter_async_context(kafka_consumer(
                s.kafka, client_id=s.worker_id, group_id=s.group_id, auto_offset_reset="earliest",
                max_poll_interval_ms=600_000))
            runner = GroupRunner(
                consumer, s.topics.infer(s.model), Codec(TokenizedRequest), self.handle,
                self._publisher, s.topics.deadletter, name="worker", max_in_flight=s.max_in_flight,
                on_dead_letter=self.metrics.dead_letters.inc)
            runner.subscribe()
            await registry.heartbeat(s.model.route, s.worker_id)  # visible to gateways before "ready"
            beat = asyncio.create_task(self._heartbeat(registry), name="worker-heartbeat")
            consume = asyncio.create_task(runner.run(), name="worker-consume")
            aborts = asyncio.create_task(
                listen_for_aborts(abort_consumer, self.abort, self._set_aside), name="worker-aborts")
            freeze_heap()
            log.info(ready_line("worker", f"pool={s.pool} model={s.model.name} metrics_port={port}"))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({beat, consume, aborts, stopped}, return_when=asyncio.FIRST_COMPLETED)
            # Stop taking work and leave the registry, finish what runs (aborts still
            # arrive meanwhile), then close in reverse order.
            runner.stop()
            beat.cancel()
            await _quietly(registry.remove(s.model.route, s.worker_id))
            await runner.drain(s.drain_s)  # waits for the consume loop to exit first
            for task in (consume, aborts, stopped):
                task.cancel()
            results = await asyncio.gather(beat, consume, aborts, return_exceptions=True)
            if not stop.is_set():
                failed = [r for r in results if isinstance(r, BaseException)
                          and not isinstance(r, asyncio.CancelledError)]
                raise RuntimeError(f"a worker loop died: {failed!r}")

    async def _heartbeat(self, registry: WorkerRegistry) -> None:
        while True:
            try:
                await registry.heartbeat(self.settings.model.route, self.settings.worker_id)
            except Exception as exc:  # Redis blip: the next beat retries
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _set_aside(self, record, error: str) -> None:
        self.metrics.dead_letters.inc()
        try:
            await self._publisher.dead_letter(self.settings.topics.deadletter, record, error,
                                              "worker-aborts")
        except KafkaError:
            log.exception("could not dead-letter an abort message; dropped it")

    async def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)  # also covers a request vLLM has not registered yet
        if request_id in self._active:
            await self._engine.abort(request_id)
            self.metrics.aborts.inc()
            log.info("aborted %s on the client's request", request_id)

    async def _abortable(self, rid: str, outputs: AsyncIterator) -> AsyncIterator:
        """Pass the engine's outputs through; an abort that raced the request's registration
        in the engine (and so was a no-op there) is applied once the request is running."""
        applied = False
        async for out in outputs:
            yield out
            if not applied and not out.finished and rid in self._aborted:
                applied = True
                await self._engine.abort(rid)

    async def handle(self, req: TokenizedRequest, meta: Meta) -> None:
        rid = req.request_id
        if rid in self._handling:  # checked and claimed before any await
            log.warning("request %s delivered twice while running; ignoring the copy", rid)
            return
        self._handling.add(rid)
        try:
            await self._handle(req, Meta(rid, meta.reply_to, child_traceparent(meta.traceparent)))
        finally:
            self._handling.discard(rid)

    async def _handle(self, req: TokenizedRequest, meta: Meta) -> None:
        rid = req.request_id
        stream = ReplyStream(rid, self.settings.worker_id, len(req.prompt_token_ids), req.sampling.n,
                             req.sampling.logprobs or 0)
        marked = await self._marked(rid)  # an abort may also arrive during this await
        if marked or rid in self._aborted:
            # The client left before the request got here: answer without generating.
            self.metrics.aborts.inc()
            stream.finish("abort")
            await self._send(meta, stream.take())
            return
        self._active.add(rid)
        self.metrics.in_flight.inc()
        try:
            prompt = await engine_prompt(req, self.settings.model.vision, self._images)
            outputs = self._abortable(rid, self._engine.generate(
                prompt, to_sampling_params(req.sampling), request_id=rid))
            last = await pump(outputs, stream, lambda msg: self._send(meta, msg),
                              self.settings.coalesce_ms / 1000)
            if last is not None:
                await last  # stored in Kafka before the offset may be committed
            self._count(stream)
        except asyncio.CancelledError:
            # Shutdown deadline passed: tell the client rather than leave it waiting.
            await self._send_error(meta, stream, Unavailable("the worker shut down mid-request"))
            raise
        except Exception as exc:
            if isinstance(exc, SluiceError):
                pass
            elif isinstance(exc, RedisError):
                exc = Unavailable(f"the image store is unavailable: {exc}", retry_after=2)
            elif isinstance(exc, self._client_errors):  # vLLM rejected a parameter combination
                exc = InvalidRequest(str(exc))
            else:
                log.exception("generation of %s failed", rid)
            await self._send_error(meta, stream, exc)
        finally:
            self._active.discard(rid)
            self.metrics.in_flight.dec()

    async def _marked(self, rid: str) -> bool:
        try:
            return await self._marks.is_marked(rid)
        except RedisError as exc:  # without Redis, only Kafka abort events stop requests
            log.warning("abort marks unavailable: %s", exc)
            return False

    def _count(self, stream: ReplyStream) -> None:
        self.metrics.tokens.inc(stream.completion_tokens)
        self.metrics.requests.labels("ok").inc()

    async def _send(self, meta: Meta, msg: TokenDelta) -> asyncio.Future | None:
        self.metrics.messages.inc()
        queued = time.perf_counter()
        fut = await self._publisher.reply(meta, msg)
        if fut is not None:
            fut.add_done_callback(lambda _: self.metrics.reply_ack.observe(time.perf_counter() - queued))
        return fut

    async def _send_error(self, meta: Meta, stream: ReplyStream, exc: BaseException) -> None:
        self.metrics.requests.labels("error").inc()
        reply = error_reply(exc, request_id=stream.request_id, source=stream.source, seq=stream.seq)
        try:
            fut = await asyncio.shield(self._publisher.reply(meta, reply))
            if fut is not None:
                await asyncio.shield(fut)
        except KafkaError:
            log.exception("could not report the error of %s", stream.request_id)


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as exc:
        log.warning("ignored during shutdown: %s", exc)


def build_worker(settings: WorkerSettings) -> WorkerService:
    return WorkerService(settings)
