"""Images/s of one preprocess process on 1024x1024 JPEGs, alone (no tokenizer, no worker).

    python -m infra.bench.preprocess_rate [--images 200] [--threads 1 2]

Starts Kafka, Redis and one preprocess process per --threads value (one after the other),
produces requests with one distinct JPEG each (data: URLs, so every image is a cache miss)
to the preprocess topic, and times until the last one is forwarded to the tokenizer topic.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from infra.bench.images import jpeg_urls
from infra.localinfra import ROOT, local_infra
from infra.models.tiny_qwen3vl import DEFAULT_OUT
from infra.procs import ServiceProcess
from shared.bus import Meta, Publisher, ReplyTo, assign_from_end, ensure_topics, kafka_consumer, kafka_producer
from shared.contracts import (GenerateRequest, ImageUrlPart, PartsChatPrompt, PartsMessage, Sampling,
                              TextPart)
from shared.settings import KafkaSettings, TopicSpec, Topics


def _request(url: str) -> GenerateRequest:
    return GenerateRequest(
        request_id=uuid.uuid4().hex, model=DEFAULT_OUT.name, created=time.time(),
        sampling=Sampling(max_tokens=1),
        prompt=PartsChatPrompt(messages=[PartsMessage(role="user", parts=[
            ImageUrlPart(url=url), TextPart(text="Describe it.")])]))


async def _run(env: dict[str, str], warmup: list[str], urls: list[str]) -> tuple[float, float]:
    """Seconds from the first send to the last forward of `urls`, after `warmup` went through
    (the consumer group has joined, the thread pool is warm); then the same for `urls` again
    (every image a cache hit)."""
    kafka = KafkaSettings.from_env(env)
    topics = Topics.from_env(env)
    replies = topics.replies_spec
    await ensure_topics(kafka, [replies])
    forwarded = TopicSpec(topics.requests, topics.request_partitions)
    async with kafka_producer(kafka, "bench") as producer, \
            kafka_consumer(kafka, client_id="bench-reader", group_id=None,
                           max_partition_fetch_bytes=16 << 20) as reader:
        await assign_from_end(reader, forwarded)
        publisher = Publisher(producer)

        async def through(batch: list[str]) -> None:
            requests = [_request(url) for url in batch]
            for req in requests:
                await publisher.send(topics.preprocess, req, Meta(req.request_id, ReplyTo(replies.name, 0)))
            seen = 0
            async for _ in reader:
                seen += 1
                if seen == len(requests):
                    return

        await through(warmup)
        started = time.perf_counter()
        await through(urls)
        new = time.perf_counter() - started
        started = time.perf_counter()
        await through(urls)
        return new, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    urls = jpeg_urls(args.images + 4)
    warmup, urls = urls[:4], urls[4:]
    size = statistics.mean(len(u) * 3 // 4 for u in urls)
    print(f"{args.images} distinct 1024x1024 JPEGs, {size / 1024:.0f} KiB each on average; "
          f"{os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        models = f"{DEFAULT_OUT.name}={DEFAULT_OUT}@cpu"
        endpoints = stack.enter_context(local_infra(Path(work), env={**os.environ, "SLUICE_MODELS": models}))
        for run, threads in enumerate(args.threads):
            env = {**os.environ, **endpoints.env(), "SLUICE_MODELS": models,
                   "SLUICE_TOPIC_PREFIX": f"bench{run}",  # its own topics and cache keys
                   "PREPROCESS_THREADS": str(threads)}
            proc = ServiceProcess(f"preprocess-{run}", "services.preprocess", env,
                                  ROOT / ".cache" / "bench" / f"preprocess-{run}.log")
            try:
                proc.wait_ready(120)
                new, repeated = asyncio.run(_run(env, warmup, urls))
            finally:
                proc.stop()
            print(f"threads={threads}: {args.images / new:.1f} images/s new "
                  f"({new / args.images * 1000:.1f} ms each, end to end through Kafka); "
                  f"{args.images / repeated:.1f} images/s repeated (cache hits)", flush=True)


if __name__ == "__main__":
    main()
