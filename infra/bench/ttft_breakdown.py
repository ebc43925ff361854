"""Where one request's time to first token goes, stage by stage, on a running stack.

    python -m infra.bench.ttft_breakdown --url http://127.0.0.1:8000 --kafka 127.0.0.1:9092

Sends requests one at a time (concurrency 1) and reads, from a passive consumer of its own,
the broker timestamp each stage's producer stamped on the request's records (the key is
the request id): the gateway's GenerateRequest, the tokenizer's TokenizedRequest and the
worker's first TokenDelta. The spans between them, with the client's send and first-token
times, split the TTFT. Kafka timestamps have millisecond resolution (truncated): a span can
read up to 1 ms off. The observer's own lag behind each timestamp is printed as "hop".
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.bench.sse import chat_events, content

STAGES = ("request", "infer", "reply")  # which topic a record came from
WORDS = "river mountain cloud forest stone light water wind field harbour".split()


def _stage(topic: str) -> str | None:
    if topic.endswith(".requests"):
        return "request"
    if ".infer." in topic:
        return "infer"
    if topic.endswith(".replies"):
        return "reply"
    return None


def _header(record) -> bool:
    """The gateway's stream header on the reply topic (not a reply)."""
    return any(k == "sluice-type" and v == b"stream_opened" for k, v in record.headers or ())


async def _observe(consumer: AIOKafkaConsumer, seen: dict) -> None:
    """First record per (stage, request id): (its timestamp, when we read it), in s. Reply
    records carry the broker's append time (the reply topic's LogAppendTime), the others
    their producer's send time."""
    while True:
        batches = await consumer.getmany(timeout_ms=1000)
        now = time.time()
        for tp, records in batches.items():
            stage = _stage(tp.topic)
            for r in records:
                if stage and r.key and not _header(r):
                    seen.setdefault((stage, r.key.decode()), (r.timestamp / 1000, now))


async def _watch_all(kafka: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    topics = [t for t in await consumer.topics() if _stage(t)]
    await consumer._client.force_metadata_update()  # partition counts of every topic
    tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve now, so nothing sent after this is missed
    return consumer


async def run(url: str, kafka: str, model: str | None, requests: int, words: int) -> None:
    consumer = await _watch_all(kafka)
    seen: dict = {}
    observer = asyncio.create_task(_observe(consumer, seen))
    wall = time.time() - time.perf_counter()  # perf_counter → wall clock
    rows = []
    try:
        async with aiohttp.ClientSession() as session:
            if model is None:
                async with session.get(f"{url}/v1/models") as resp:
                    model = (await resp.json())["data"][0]["id"]
            for i in range(requests + 3):  # the first three warm the path and are dropped
                text = " ".join(random.choice(WORDS) for _ in range(words))
                body = {"model": model, "max_tokens": 4, "stream": True,
                        "messages": [{"role": "user", "content": f"{i}: {text}"}]}
                sent, first, rid = time.perf_counter(), None, None
                async for now, chunk in chat_events(session, url, body):
                    rid = rid or chunk["id"].split("-", 1)[1]
                    if first is None and content(chunk):
                        first = now
                if i >= 3 and rid and first:
                    rows.append((rid, sent + wall, first + wall))
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the observer's last reads
    finally:
        observer.cancel()
        await asyncio.gather(observer, return_exceptions=True)
        await consumer.stop()
    spans: dict[str, list[float]] = {
        "client send → gateway produced the request": [],
        "→ tokenizer produced the tokens (hop, tokenizing)": [],
        "→ worker produced the first token (hop, engine prefill)": [],
        "→ client read it (hop, gateway, SSE)": [],
        "TTFT": [],
    }
    for rid, sent, first in rows:
        try:
            stamps = [seen[(stage, rid)][0] for stage in STAGES]
        except KeyError:
            continue
        points = [sent, *stamps, first]
        for name, a, b in zip(spans, points, points[1:]):
            spans[name].append(b - a)
        spans["TTFT"].append(first - sent)
    for stage in STAGES:
        spans[f"hop to this observer: {stage}"] = [
            seen[(stage, rid)][1] - seen[(stage, rid)][0] for rid, _, _ in rows if (stage, rid) in seen]
    print(f"{len(spans['TTFT'])} requests of ~{words} words, one at a time; p50 / p90 in ms")
    for name, values in spans.items():
        if values:
            values.sort()
            p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
            print(f"  {name:58s} {statistics.median(values) * 1000:7.1f} / {p90 * 1000:7.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--kafka", default="127.0.0.1:9092")
    p.add_argument("--model")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--words", type=int, default=120, help="prompt length (~2 tokens a word)")
    args = p.parse_args()
    asyncio.run(run(args.url, args.kafka, args.model, args.requests, args.words))


if __name__ == "__main__":
    main()
