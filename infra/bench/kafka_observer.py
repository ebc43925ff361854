"""Kafka hop latency seen by a passive observer: a consumer of its own (no group, nothing
committed) on the request and inference topics, in a process of its own so a busy
service's event loop does not colour the figure.

    python -m infra.bench.kafka_observer     (BENCH_OBSERVER_STATS=<file> for the samples)

For every record: the time its poll returned it − the record's broker timestamp (set by
the producer when it sent it). Kafka timestamps have millisecond resolution and are
truncated, so a hop can read up to 1 ms long. The samples go to BENCH_OBSERVER_STATS at
shutdown, tagged with CLOCK_MONOTONIC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path

from shared.bus import assign_from_end, kafka_consumer
from shared.lifecycle import ready_line, run_until_signal
from shared.settings import KafkaSettings, ModelCatalog, Topics, TopicSpec
from shared.telemetry import setup_logging

from infra.bench.routing import infer_topic
from infra.bench.samples import Samples

log = logging.getLogger("infra.bench.kafka_observer")


async def observe(stop: asyncio.Event) -> None:
    env = os.environ
    kafka, topics = KafkaSettings.from_env(env), Topics.from_env(env)
    model = ModelCatalog.from_env(env).models[0]
    watched = {topics.requests: ("request_hop_ms", topics.request_partitions),
               infer_topic(topics, model): ("infer_hop_ms", topics.infer_partitions)}
    samples = Samples()
    async with AsyncExitStack() as stack:
        readers = []
        for topic, (series, partitions) in watched.items():
            consumer = await stack.enter_async_context(
                kafka_consumer(kafka, client_id=f"bench-observer-{series}", group_id=None))
            await assign_from_end(consumer, TopicSpec(topic, partitions))
            readers.append(asyncio.create_task(_read(consumer, series, samples)))
        log.info(ready_line("kafka-observer", "topics=" + ",".join(watched)))
        await stop.wait()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    path = env.get("BENCH_OBSERVER_STATS")
    if path:
        Path(path).write_text(json.dumps({"samples": samples.as_json()}))


async def _read(consumer, series: str, samples: Samples) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=1000)
        now = time.time()
        for records in batches.values():
            for record in records:
                samples.add(series, (now - record.timestamp / 1000) * 1000)


def main() -> None:
    setup_logging("kafka-observer")
    run_until_signal(observe)


if __name__ == "__main__":
    main()
