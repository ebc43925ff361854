"""FAKE ENGINE (benchmark only): a token source that stands in for the vLLM worker, so the
transport benchmark measures the gateway, Kafka and SSE path alone.

    SLUICE_BENCH_FAKE_ENGINE=benchmark-only SLUICE_TOPIC_PREFIX=bench... \
        python -m infra.bench.fake_engine

It cannot be enabled by accident:
- it lives under infra/bench, not services/, and no launcher or image starts it;
- it refuses to start unless SLUICE_BENCH_FAKE_ENGINE=benchmark-only, and unless the
  topic prefix starts with "bench", so it never reads a real deployment's topics;
- its worker id (the `source` of every TokenDelta) starts with "bench-fake", and every
  token's text is a timestamp, never model output;
- every figure made with it carries the label FAKE ENGINE (benchmark only).

It reads the worker's input topic with the worker's own consumer code (GroupRunner),
registers in the worker registry (the gateway admits requests only for a live worker),
and streams replies with the worker's own code (ReplyStream, pump, Publisher): only
vLLM is replaced. A ticker plays the engine's decode steps: every
BENCH_FAKE_TOKEN_INTERVAL_MS (default 5) each running request gets one token whose text
is "[<CLOCK_MONOTONIC in µs>]", so the client can compute the latency the path adds to
every token. Requests end after exactly max_tokens tokens.

Measured here, written to BENCH_FAKE_STATS (JSON) at shutdown, each sample tagged with
CLOCK_MONOTONIC so the benchmark can cut them per load level:
- worker_infer_hop_ms: Kafka hop tokenizer → worker as this worker's consumer sees it
  (its poll time − the record's broker timestamp, which has millisecond resolution),
- gateway_to_worker_ms: the gateway's `created` stamp → this worker's poll (both request
  hops and the tokenizer),
- reply_ack_ms: a reply queued → the broker's acknowledgement (the producer side of
  the reply hop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from shared.bus import Meta, Publisher, kafka_consumer, kafka_producer
from shared.cache import WorkerRegistry
from shared.redisconn import redis_client
from shared.consumer import GroupRunner
from shared.contracts import Codec, TokenDelta, TokenizedRequest
from shared.env import SettingsError, env_float, env_int
from shared.lifecycle import ready_line, run_until_signal
from shared.settings import KafkaSettings, ModelCatalog, ModelSpec, RedisSettings, Topics
from shared.telemetry import setup_logging

from services.worker.stream import ReplyStream, pump

from infra.bench.routing import infer_topic, liveness_key, worker_group
from infra.bench.samples import Samples

log = logging.getLogger("infra.bench.fake_engine")

LABEL = "FAKE ENGINE (benchmark only)"
GUARD_ENV = "SLUICE_BENCH_FAKE_ENGINE"
GUARD_VALUE = "benchmark-only"
TOPIC_PREFIX_START = "bench"
ID_PREFIX = "bench-fake"
FAKE_TOKEN_ID = 42


def check_enabled(env: Mapping[str, str]) -> None:
    """Refuse to run unless explicitly enabled, on benchmark-only topics."""
    if env.get(GUARD_ENV) != GUARD_VALUE:
        raise SystemExit(f"{LABEL}: refusing to start; set {GUARD_ENV}={GUARD_VALUE} "
                         "(never in a deployment)")
    prefix = env.get("SLUICE_TOPIC_PREFIX", "sluice")
    if not prefix.startswith(TOPIC_PREFIX_START):
        raise SystemExit(f"{LABEL}: refusing to start on topic prefix {prefix!r}; its topics "
                         f"must start with {TOPIC_PREFIX_START!r}")


@dataclass(frozen=True, slots=True)
class FakeSettings:
    kafka: KafkaSettings
    redis: RedisSettings
    topics: Topics
    model: ModelSpec
    worker_id: str
    interval_s: float
    coalesce_s: float
    max_in_flight: int
    stats_path: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FakeSettings:
        check_enabled(env)
        topics = Topics.from_env(env)
        stats = env.get("BENCH_FAKE_STATS")
        interval = env_float(env, "BENCH_FAKE_TOKEN_INTERVAL_MS", 5.0)
        if interval <= 0:
            raise SettingsError("BENCH_FAKE_TOKEN_INTERVAL_MS must be positive")
        return cls(
            kafka=KafkaSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            topics=topics,
            model=ModelCatalog.from_env(env).models[0],
            worker_id=f"{ID_PREFIX}-{socket.gethostname()}-{os.getpid()}",
            interval_s=interval / 1000,
            # The worker's coalescing default, so replies are shaped as the worker's are.
            coalesce_s=env_float(env, "WORKER_COALESCE_MS", 3.0) / 1000,
            max_in_flight=env_int(env, "BENCH_FAKE_MAX_IN_FLIGHT", 2048, minimum=1),
            stats_path=Path(stats) if stats else None,
        )


@dataclass(slots=True)
class _Completion:
    """The fields of vLLM's CompletionOutput that ReplyStream reads."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    logprobs: None = None


@dataclass(slots=True)
class _Output:
    """The fields of vLLM's RequestOutput (DELTA kind) that ReplyStream reads."""

    outputs: list[_Completion]
    finished: bool


@dataclass(eq=False)
class _FakeRequest:
    n: int
    remaining: int
    stamps: list[int] = field(default_factory=list)  # tokens made since the last read
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Ticker:
    """Plays the engine's decode loop: one token per running request per step."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._running: set[_FakeRequest] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self._interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                due = loop.time()  # fell behind: no burst of catch-up steps
            stamp = time.monotonic_ns() // 1000
            for req in self._running:
                if len(req.stamps) < req.remaining:
                    req.stamps.append(stamp)
                    req.wake.set()

    async def generate(self, max_tokens: int, n: int) -> AsyncIterator[_Output]:
        req = _FakeRequest(n=n, remaining=max_tokens)
        self._running.add(req)
        try:
            while req.remaining > 0:
                await req.wake.wait()
                req.wake.clear()
                stamps, req.stamps = req.stamps, []
                req.remaining -= len(stamps)
                text = "".join(f"[{s}]" for s in stamps)
                reason = "length" if req.remaining <= 0 else None
                yield _Output([_Completion(i, [FAKE_TOKEN_ID] * len(stamps), text, reason)
                               for i in range(n)], finished=reason is not None)
        finally:
            self._running.discard(req)


class _Stamping:
    """The group consumer, seen through: notes each record's broker timestamp and the
    moment the poll returned it, keyed by request id (the record key)."""

    def __init__(self, consumer, seen: dict[str, tuple[float, float]]) -> None:
        self._consumer = consumer
        self._seen = seen

    async def getmany(self, *args, **kwargs):
        batches = await self._consumer.getmany(*args, **kwargs)
        now = time.time()
        for records in batches.values():
            for record in records:
                if record.key is not None:
                    self._seen[record.key.decode(errors="replace")] = (record.timestamp / 1000, now)
        return batches

    def __getattr__(self, name: str):
        return getattr(self._consumer, name)


async def _registered(registry: WorkerRegistry, model: ModelSpec, worker_id: str,
                      every_s: float = 1.0) -> None:
    """Keep this source visible to the gateways' admission check, like a worker."""
    while True:
        try:
            await registry.heartbeat(liveness_key(model), worker_id)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(every_s)


class FakeEngineService:
    def __init__(self, settings: FakeSettings) -> None:
        self.settings = settings
        self.samples = Samples()
        self._ticker = Ticker(settings.interval_s)
        self._polled: dict[str, tuple[float, float]] = {}
        self._publisher: Publisher

    async def serve(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with AsyncExitStack() as stack:
            redis = await stack.enter_async_context(redis_client(s.redis.url, s.redis.timeout_s))
            registry = WorkerRegistry(redis, s.topics.prefix, ttl_s=4.0)
            producer = await stack.enter_async_context(kafka_producer(s.kafka, s.worker_id))
            self._publisher = Publisher(producer)
            consumer = await stack.enter_async_context(kafka_consumer(
                s.kafka, client_id=s.worker_id, group_id=worker_group(s.topics, s.model),
                auto_offset_reset="earliest", max_poll_interval_ms=600_000))
            runner = GroupRunner(
                _Stamping(consumer, self._polled), infer_topic(s.topics, s.model),
                Codec(TokenizedRequest), self.handle, self._publisher, s.topics.deadletter,
                name="fake-engine", max_in_flight=s.max_in_flight)
            runner.subscribe()
            await registry.heartbeat(liveness_key(s.model), s.worker_id)
            tasks = [asyncio.create_task(coro) for coro in (
                _registered(registry, s.model, s.worker_id), self._ticker.run(), runner.run())]
            log.info(ready_line("fake-engine", f"{LABEL.replace(' ', '_')} id={s.worker_id} "
                                f"topic={infer_topic(s.topics, s.model)} "
                                f"interval_ms={s.interval_s * 1000:g}"))
            await stop.wait()
            runner.stop()
            await runner.drain(5)
            await _quietly(registry.remove(liveness_key(s.model), s.worker_id))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._write_stats()

    async def handle(self, req: TokenizedRequest, meta: Meta) -> None:
        polled = self._polled.pop(req.request_id, None)
        if polled is not None:
            created_at_broker, poll = polled
            self.samples.add("worker_infer_hop_ms", (poll - created_at_broker) * 1000)
            self.samples.add("gateway_to_worker_ms", (poll - req.created) * 1000)
        stream = ReplyStream(req.request_id, self.settings.worker_id, len(req.prompt_token_ids),
                             req.sampling.n)
        outputs = ((out, None) async for out in
                   self._ticker.generate(req.sampling.max_tokens or 16, req.sampling.n))
        header = [req.opened] if req.opened is not None else []

        async def send(msg: TokenDelta) -> asyncio.Future | None:
            if header:  # as the worker does: the stream's header just ahead of its first reply
                await self._publisher.reply(meta, header.pop())
            return await self._send(meta, msg)

        last = await pump(outputs, stream, send, self.settings.coalesce_s)
        if last is not None:
            await last

    async def _send(self, meta: Meta, msg: TokenDelta) -> asyncio.Future | None:
        queued = time.perf_counter()
        fut = await self._publisher.reply(meta, msg)
        if fut is not None:
            fut.add_done_callback(
                lambda _: self.samples.add("reply_ack_ms", (time.perf_counter() - queued) * 1000))
        return fut

    def _write_stats(self) -> None:
        path = self.settings.stats_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"label": LABEL, "source": self.settings.worker_id,
                                    "samples": self.samples.as_json()}))
        log.info("%s: samples written to %s", LABEL, path)


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as exc:
        log.warning("ignored during shutdown: %s", exc)


def main() -> None:
    setup_logging("fake-engine")
    settings = FakeSettings.from_env()
    log.warning("%s: this process generates no model output; it exists only to measure "
                "the transport path", LABEL)
    run_until_signal(FakeEngineService(settings).serve)


if __name__ == "__main__":
    main()
