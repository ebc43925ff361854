"""A three-broker KRaft cluster (SLUICE_KAFKA_BROKERS=3): topics replicated three times with
min.insync.replicas=2, and idempotent acks=all producers. SIGKILL the broker that leads the
reply partition under load: every stream stalls at most briefly, and completes.

This module runs its own small stack (the three brokers, Redis, and the text model's
worker, the tokenizer and a gateway) beside the session's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra import watchdog
from infra.bench.streams import start_streams
from infra.localinfra import Endpoints, local_infra
from infra.procs import start_services

pytestmark = pytest.mark.stack


@dataclass
class Cluster:
    endpoints: Endpoints
    url: str
    model: str


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory) -> Iterator[Cluster]:
    env = {k: v for k, v in stack.env.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REDIS_CACHE_URL")}
    env.update({"SLUICE_KAFKA_BROKERS": "3", "SLUICE_GATEWAYS": "1",
                "SLUICE_MODELS": f"{stack.model}={stack.model_path}@cpu"})
    logs = stack.logs / "cluster"
    with ExitStack() as s:
        endpoints = s.enter_context(local_infra(tmp_path_factory.mktemp("cluster"), env=env))
        env = {**env, **endpoints.env()}
        _, url = start_services(s, env, logs, neighbours=list(endpoints.pids.values()))
        yield Cluster(endpoints, url, stack.model)


@pytest.fixture
async def chttp(cluster: Cluster) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=cluster.url,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


async def _leader_of_reply_partition(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics(["sluice.replies"])
        return next(p["leader"] for p in topic["partitions"] if p["partition"] == 0)
    finally:
        await admin.close()


async def test_topics_are_replicated_three_times_with_two_in_sync_required(cluster):
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.endpoints.kafka_bootstrap)
    await admin.start()
    try:
        names = ["sluice.requests", "sluice.replies", f"sluice.infer.cpu.{cluster.model}",
                 "sluice.aborts", "__consumer_offsets"]
        described = await admin.describe_topics(names)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names[:-1]])
    finally:
        await admin.close()
    for topic in described:
        assert all(len(p["replicas"]) == 3 for p in topic["partitions"]), topic["topic"]
    for response in configs:
        for _, _, _, name, entries in response.resources:
            assert dict((e[0], e[1]) for e in entries)["min.insync.replicas"] == "2", name


async def test_streams_complete_when_a_broker_of_three_is_killed(cluster, chttp):
    tasks, progress = start_streams(chttp, cluster.model, [400 + 13 * i for i in range(8)], "broker")
    await progress.all_have(10)
    before = progress.snapshot()
    leader = await _leader_of_reply_partition(cluster.endpoints.kafka_bootstrap)
    name = f"kafka-{leader}"
    victim = cluster.endpoints.units[name]
    victim.proc.kill()
    await asyncio.to_thread(victim.proc.wait, 30)
    try:
        streams = await asyncio.wait_for(asyncio.gather(*tasks), 240)
        for s, had in zip(streams, before):
            assert s.complete(), (s.errors, len(s.tokens), s.max_tokens)
            assert s.tokens[:len(had)] == had
        # A broker is fenced after broker.session.timeout.ms (6 s): acks=all writes wait
        # for it until then, so streams stall about that long (measured: 9 s at most), not more.
        assert max(s.longest_gap() for s in streams) < 20, [s.longest_gap() for s in streams]
        assert await _leader_of_reply_partition(cluster.endpoints.kafka_bootstrap) != leader
    finally:
        watchdog.forget(victim.proc.pid)
        fresh = cluster.endpoints.units[name] = victim.respawn()
        await asyncio.to_thread(fresh.wait_ready, 120)
