"""Streaming load through the gateway: tokens/s at a given concurrency.

    python -m infra.bench.gateway_load --url http://127.0.0.1:8000 --concurrency 1 32

Each stream asks for --max-tokens tokens with ignore_eos, so every request does the same
work. Counts come from the streamed usage chunk; TTFT and inter-chunk gaps from arrival times.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import orjson

from infra.bench.sse import chat_events, content


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int,
                     i: int) -> tuple[float, list[float], int]:
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Request {i}: describe a river in detail."}]}
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async for now, chunk in chat_events(session, url, body):
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif content(chunk):
            arrivals.append(now)
    ttft = arrivals[0] - start
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return ttft, gaps, tokens


async def run_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        async def guarded(i: int):
            async with sem:
                return await one_stream(session, url, model, max_tokens, i)

        await guarded(-1)  # warm-up
        start = time.perf_counter()
        results = await asyncio.gather(*(guarded(i) for i in range(requests)))
        elapsed = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    gaps = [g for r in results for g in r[1]]
    return {"concurrency": concurrency, "requests": requests, "tokens": tokens,
            "seconds": round(elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1),
            "ttft_p50_ms": round(statistics.median(r[0] for r in results) * 1000, 1),
            "chunk_gap_p50_ms": round(statistics.median(gaps) * 1000, 2) if gaps else None}


async def main_async(args) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{args.url}/v1/models") as resp:
            model = args.model or (await resp.json())["data"][0]["id"]
    for c in args.concurrency:
        requests = max(c * args.rounds, 1)
        print(orjson.dumps(await run_level(args.url, model, c, requests, args.max_tokens)).decode(),
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=4, help="requests per level = concurrency × rounds")
    p.add_argument("--max-tokens", type=int, default=128)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
