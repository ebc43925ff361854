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


async def eventually(check: Callable, timeout: float = 60) -> None:
    """Another process's state (its metrics) has nothing to await: re-check until the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def offline_reference(stack, model_path, cases: list[dict], tag: str) -> list[dict]:
    """vLLM's offline engine on `cases` (one at a time), in a subprocess: see offline_reference.py."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("offline_reference.py")
    config = json.loads((model_path / "config.json").read_text())
    max_len = config.get("text_config", config)["max_position_embeddings"]
    log = stack.logs / f"offline_reference_{tag}.log"
    result = stack.logs / f"offline_reference_{tag}.json"
    with open(log, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(model_path), str(max_len), str(result),
            stdin=asyncio.subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **stack.env})
        await proc.communicate(json.dumps(cases).encode())
    assert proc.returncode == 0, f"offline reference failed; see {log}"
    return json.loads(result.read_text())
