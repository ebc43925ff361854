"""Test helpers: Kafka access as an event-driven integration would have it, and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@asynccontextmanager
async def producer(bootstrap: str):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@asynccontextmanager
async def reader(bootstrap: str, topic: str, *, from_start: bool, partitions: int = 1):
    """A group-less reader of a whole topic, from its start or from its current end."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        if from_start:
            await c.seek_to_beginning(*tps)
        else:
            await c.seek_to_end(*tps)
        for tp in tps:
            await c.position(tp)
        yield c
    finally:
        await c.stop()


async def wait_for_record(consumer: AIOKafkaConsumer, match: Callable, timeout: float = 60):
    """Await the first record for which match(record) is true."""
    async def scan():
        async for record in consumer:
            if match(record):
                return record

    return await asyncio.wait_for(scan(), timeout)


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets)."""
    async with http.get(url) as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
