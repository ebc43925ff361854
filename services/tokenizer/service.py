"""The tokenizer service: consume GenerateRequests, publish TokenizedRequests to a pool."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

from shared.bus import Meta, Publisher, ensure_topics, kafka_consumer, kafka_producer
from shared.cache import TokenCache, content_key
from shared.consumer import GroupRunner
from shared.contracts import Codec, GenerateRequest
from shared.errors import ModelNotFound
from shared.lifecycle import freeze_heap, ready_line
from shared.redisconn import REDIS_ERRORS, redis_client
from shared.stage import check_deadline, forward, reply_error, run_group
from shared.settings import ModelSpec
from shared.telemetry import child_traceparent, metrics_server

from services.tokenizer.convert import to_tokenized
from services.tokenizer.metrics import TokenizerMetrics
from services.tokenizer.prompts import PromptEncoder
from services.tokenizer.settings import TokenizerSettings

log = logging.getLogger(__name__)


class TokenizerService:
    def __init__(self, settings: TokenizerSettings) -> None:
        self.settings = settings
        self.metrics = TokenizerMetrics()
        # Set in serve(); typed here for the handler.
        self._publisher: Publisher
        self._cache: TokenCache
        self._executor: ThreadPoolExecutor
        self._encoders: dict[str, PromptEncoder] = {}

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            self._executor = stack.enter_context(
                ThreadPoolExecutor(s.threads, thread_name_prefix="tokenize"))
            loop = asyncio.get_running_loop()
            for spec in s.catalog.models:
                self._encoders[spec.name] = await loop.run_in_executor(
                    self._executor, PromptEncoder, spec.path, spec.vision)
            redis = await stack.enter_async_context(
                redis_client(s.redis.cache_url, s.redis.timeout_s, "cache"))
            self._cache = TokenCache(redis, s.topics.prefix, s.cache_ttl_s)
            await ensure_topics(s.kafka, s.topics.core(s.catalog.models))
            producer = await stack.enter_async_context(kafka_producer(s.kafka, s.instance_id))
            self._publisher = Publisher(producer)
            port = await stack.enter_async_context(
                metrics_server(self.metrics.registry, "127.0.0.1", s.metrics_port))
            consumer = await stack.enter_async_context(kafka_consumer(
                s.kafka, client_id=s.instance_id, group_id=s.group_id,
                auto_offset_reset="earliest", max_poll_interval_ms=300_000))
            runner = GroupRunner(
                consumer, s.topics.requests, Codec(GenerateRequest), self.handle, self._publisher,
                s.topics.deadletter, name="tokenizer", max_in_flight=s.max_in_flight,
                on_dead_letter=self.metrics.dead_letters.inc)
            runner.subscribe()
            freeze_heap()
            log.info(ready_line("tokenizer", f"metrics_port={port}"))
            await run_group(runner, stop, s.drain_s)

    async def handle(self, req: GenerateRequest, meta: Meta) -> None:
        out_meta = Meta(meta.request_id, meta.reply_to, child_traceparent(meta.traceparent))
        try:
            check_deadline(req.deadline)
            spec = self._spec(req.model)
            ids = await self._token_ids(spec, req)
            tokenized = to_tokenized(req, ids, spec)
            await forward(self._publisher, self.settings.topics.infer(spec), tokenized, out_meta,
                          deadline=req.deadline)
            self.metrics.requests.labels("ok").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.requests.labels("error").inc()
            await reply_error(self._publisher, out_meta, exc, request_id=req.request_id,
                              source=self.settings.instance_id, deadline=req.deadline)

    def _spec(self, model: str) -> ModelSpec:
        spec = self.settings.catalog.get(model)
        if spec is None:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        return spec

    async def _token_ids(self, spec: ModelSpec, req: GenerateRequest) -> list[int]:
        encoder = self._encoders[spec.name]
        key = content_key(*encoder.cache_parts(req.prompt))
        try:
            ids = await self._cache.get(key)
        except REDIS_ERRORS as exc:  # the cache is an optimisation: tokenize anyway
            log.debug("token cache unavailable: %s", exc)
            ids = None
        if ids is not None:
            self.metrics.cache.labels("hit").inc()
            return ids
        self.metrics.cache.labels("miss").inc()
        started = time.perf_counter()
        ids = await asyncio.get_running_loop().run_in_executor(self._executor, encoder.encode, req.prompt)
        self.metrics.encode_seconds.observe(time.perf_counter() - started)
        try:
            await self._cache.put(key, ids)
        except REDIS_ERRORS as exc:
            log.debug("token cache unavailable: %s", exc)
        return ids


def build_worker(settings: TokenizerSettings) -> TokenizerService:
    return TokenizerService(settings)
