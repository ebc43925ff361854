"""The preprocess service: consume requests with images, fetch, decode and resize each image,
store it in Redis, and forward the request (now carrying image keys) to the tokenizer."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

import msgspec

from shared.bus import Meta, Publisher, ensure_topics, kafka_consumer, kafka_producer
from shared.cache import content_key
from shared.consumer import GroupRunner
from shared.contracts import Codec, GenerateRequest, ImageRef, ImageUrlPart, PartsChatPrompt
from shared.errors import InvalidRequest, ModelNotFound, Unavailable
from shared.images import ImageStore
from shared.lifecycle import freeze_heap, ready_line
from shared.redisconn import REDIS_ERRORS, redis_client
from shared.stage import check_deadline, forward, reply_error, run_group
from shared.settings import ModelSpec
from shared.telemetry import child_traceparent, metrics_server
from shared.vision import VisionSpec

from services.preprocess.convert import image_urls, resolve
from services.preprocess.decode import decode
from services.preprocess.fetch import DataUrl, Fetcher, decode_base64, parse_data_url
from services.preprocess.metrics import PreprocessMetrics
from services.preprocess.settings import PreprocessSettings

log = logging.getLogger(__name__)


class PreprocessService:
    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        self.metrics = PreprocessMetrics()
        # Images being decoded now, by content key: a concurrent copy waits for the first.
        self._decoding: dict[str, asyncio.Future[ImageRef]] = {}
        self._publisher: Publisher
        self._store: ImageStore
        self._executor: ThreadPoolExecutor
        self._fetcher: Fetcher

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            self._executor = stack.enter_context(
                ThreadPoolExecutor(s.threads, thread_name_prefix="image"))
            redis = await stack.enter_async_context(
                redis_client(s.redis.cache_url, s.redis.timeout_s, "cache"))
            self._store = ImageStore(redis, s.topics.prefix, s.cache_ttl_s)
            self._fetcher = await stack.enter_async_context(Fetcher(s.fetch, s.limits))
            await ensure_topics(s.kafka, s.topics.core(s.catalog.models))
            producer = await stack.enter_async_context(kafka_producer(s.kafka, s.instance_id))
            self._publisher = Publisher(producer)
            port = await stack.enter_async_context(
                metrics_server(self.metrics.registry, "127.0.0.1", s.metrics_port))
            consumer = await stack.enter_async_context(kafka_consumer(
                s.kafka, client_id=s.instance_id, group_id=s.group_id,
                auto_offset_reset="earliest", max_poll_interval_ms=300_000))
            runner = GroupRunner(
                consumer, s.topics.preprocess, Codec(GenerateRequest), self.handle, self._publisher,
                s.topics.deadletter, name="preprocess", max_in_flight=s.max_in_flight,
                on_dead_letter=self.metrics.dead_letters.inc, on_assigned=self.metrics.partitions.set)
            runner.subscribe()
            freeze_heap()
            log.info(ready_line("preprocess", f"metrics_port={port}"))
            await run_group(runner, stop, s.drain_s)

    async def handle(self, req: GenerateRequest, meta: Meta) -> None:
        out_meta = Meta(meta.request_id, meta.reply_to, child_traceparent(meta.traceparent))
        try:
            check_deadline(req.deadline)
            resolved = await self._resolve(req)
            await forward(self._publisher, self.settings.topics.requests, resolved, out_meta,
                          deadline=req.deadline)
            self.metrics.requests.labels("ok").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.requests.labels("error").inc()
            await reply_error(self._publisher, out_meta, exc, request_id=req.request_id,
                              source=self.settings.instance_id, deadline=req.deadline)

    async def _resolve(self, req: GenerateRequest) -> GenerateRequest:
        spec = self._vision_model(req.model)
        if not isinstance(req.prompt, PartsChatPrompt):
            raise InvalidRequest("only chat requests with image parts belong on the preprocess topic")
        urls = list(image_urls(req.prompt))
        if len(urls) > self.settings.limits.max_images:
            raise InvalidRequest(f"at most {self.settings.limits.max_images} images are accepted per "
                                 f"request; this one has {len(urls)}", param="messages")
        assert spec.vision is not None
        refs = await asyncio.gather(*(self._image(spec.vision, part, param) for param, part in urls))
        inline = sum(len(ref.pixels) for ref in refs if ref.pixels is not None)
        # Carried inline (base64 in JSON) the pixels must fit one Kafka message with the rest.
        if inline * 4 // 3 + 64 * 1024 > self.settings.kafka.max_message_bytes:
            raise Unavailable("the image store is unavailable, and this request's images are too "
                              "large to carry without it; retry shortly", retry_after=2)
        return resolve(req, list(refs))

    def _vision_model(self, model: str) -> ModelSpec:
        spec = self.settings.catalog.get(model)
        if spec is None:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        if spec.vision is None:
            raise InvalidRequest(f"The model `{model}` does not accept image input.", param="messages")
        return spec

    async def _image(self, vision: VisionSpec, part: ImageUrlPart, param: str) -> ImageRef:
        raw = await self._bytes(part.url, param)
        loop = asyncio.get_running_loop()
        key = await loop.run_in_executor(self._executor, content_key, repr(vision).encode(), raw)
        pending = self._decoding.get(key)
        if pending is not None:  # the same content, being decoded right now
            try:
                ref = await asyncio.shield(pending)
                self.metrics.images.labels("hit").inc()
                return ref
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # the first decoder was cancelled (shutdown): decode it ourselves
        try:
            ref = await self._store.find(key)
        except REDIS_ERRORS as exc:  # a cache: decode it again
            log.debug("image store unavailable: %s", exc)
            ref = None
        if ref is not None:
            self.metrics.images.labels("hit").inc()
            return ref
        future: asyncio.Future[ImageRef] = loop.create_future()
        self._decoding[key] = future
        try:
            ref = await self._decode_and_store(vision, key, raw, param)
            future.set_result(ref)
            return ref
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            if self._decoding.get(key) is future:
                del self._decoding[key]

    async def _decode_and_store(self, vision: VisionSpec, key: str, raw: bytes, param: str) -> ImageRef:
        started = time.perf_counter()
        try:
            image = await asyncio.get_running_loop().run_in_executor(
                self._executor, decode, raw, vision, self.settings.limits, param)
        except InvalidRequest:
            self.metrics.images.labels("invalid").inc()
            raise
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        ref = ImageRef(key=key, width=image.width, height=image.height, tokens=image.tokens)
        try:
            await self._store.put(ref, image.rgb)
        except REDIS_ERRORS as exc:
            # Without the store, the request carries the pixels itself.
            log.warning("image store unavailable (%s); the image travels in the request", exc)
            self.metrics.images.labels("inline").inc()
            return msgspec.structs.replace(ref, pixels=image.rgb)
        self.metrics.images.labels("miss").inc()
        return ref

    async def _bytes(self, url: str, param: str) -> bytes:
        if url[:5].lower() == "data:":
            data: DataUrl = parse_data_url(url, self.settings.limits, param)
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, decode_base64, data, param)
        started = time.perf_counter()
        raw = await self._fetcher.fetch(url, param)
        self.metrics.fetch_seconds.observe(time.perf_counter() - started)
        return raw


def build_worker(settings: PreprocessSettings) -> PreprocessService:
    return PreprocessService(settings)
