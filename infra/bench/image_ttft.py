"""Time to first token through a running gateway: a one-image chat against a text-only one,
on the vision model, one request at a time, interleaved so drift hits both alike.

    python -m infra.bench.image_ttft --url http://127.0.0.1:8000 [--rounds 20]

The image is a distinct 1024x1024 JPEG each round (a preprocess cache miss: fetch, decode,
resize to the model's bound, store), then the same one again (a cache hit).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from infra.bench.images import jpeg_urls
from infra.bench.sse import chat_events, content

MODEL = "sluice-tiny-qwen3vl"
TEXT = "Describe the picture in detail."


async def _ttft(session: aiohttp.ClientSession, url: str, message) -> tuple[float, int]:
    body = {"model": MODEL, "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": message}]}
    started = time.perf_counter()
    first = None
    prompt_tokens = 0
    async for now, chunk in chat_events(session, url, body):
        if first is None and content(chunk):
            first = now - started
        if chunk.get("usage"):
            prompt_tokens = chunk["usage"]["prompt_tokens"]
    assert first is not None
    return first, prompt_tokens


def _summary(name: str, samples: list[tuple[float, int]]) -> str:
    times = sorted(t for t, _ in samples)
    p90 = times[int(0.9 * (len(times) - 1))]
    return (f"{name:<24} TTFT p50 {statistics.median(times) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   "
            f"prompt {samples[0][1]} tokens")


async def main_async(url: str, rounds: int) -> None:
    images = jpeg_urls(rounds + 1, seed=int(time.time()))  # new to the cache on every run
    text, miss, hit = [], [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await _ttft(session, url, TEXT)  # warm-up
        await _ttft(session, url, [{"type": "image_url", "image_url": {"url": images[-1]}}])
        for i in range(rounds):
            image = [{"type": "image_url", "image_url": {"url": images[i]}}, {"type": "text", "text": TEXT}]
            text.append(await _ttft(session, url, TEXT))
            miss.append(await _ttft(session, url, image))
            hit.append(await _ttft(session, url, image))
    print(f"{rounds} rounds, 1024x1024 JPEG ({len(images[0]) * 3 // 4 // 1024} KiB), model {MODEL}")
    for name, samples in (("text only", text), ("one image, new", miss), ("one image, repeated", hit)):
        print(_summary(name, samples))
    base = statistics.median(t for t, _ in text)
    print(f"one image adds {(statistics.median(t for t, _ in miss) - base) * 1000:.1f} ms (new) and "
          f"{(statistics.median(t for t, _ in hit) - base) * 1000:.1f} ms (repeated) to the median TTFT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main_async(args.url, args.rounds))


if __name__ == "__main__":
    main()
