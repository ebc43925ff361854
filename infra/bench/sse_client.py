"""A lean streaming client for the transport benchmark: a closed loop of `concurrency`
chat streams against the gateway, timing every SSE chunk.

It reads the fake engine's token texts ("[<CLOCK_MONOTONIC µs>]", stamped when the token
was made) and subtracts them from the arrival time, so each token's added latency is
measured on one clock: reply hop + gateway + SSE + this client. Token counts come from
the usage chunk.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import aiohttp

from infra.bench.sse import StreamFailed, chat_events, content

_STAMP = re.compile(r"\[(\d+)\]")


@dataclass
class StreamStats:
    start: float = 0.0
    first: float | None = None
    last: float = 0.0
    gaps: list[float] = field(default_factory=list)
    added_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int,
                     i: int) -> StreamStats:
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"transport probe {i}"}]}
    st = StreamStats(start=time.perf_counter())
    try:
        async for now, chunk in chat_events(session, url, body):
            if chunk.get("error"):
                st.error = str(chunk["error"])[:200]
                return st
            if chunk.get("usage"):
                st.tokens = chunk["usage"]["completion_tokens"]
            text = content(chunk)
            if not text:
                continue
            # perf_counter is CLOCK_MONOTONIC on Linux, the fake engine's clock too.
            now_us = now * 1e6
            st.added_ms.extend((now_us - int(s)) / 1000 for s in _STAMP.findall(text))
            if st.first is None:
                st.first = now
            else:
                st.gaps.append(now - st.last)
            st.last = now
    except StreamFailed as exc:
        st.error = str(exc)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        st.error = f"{type(exc).__name__}: {exc}"
    return st


async def closed_loop(url: str, model: str, concurrency: int, requests: int, max_tokens: int,
                      warmup: int = 0) -> tuple[float, float, list[StreamStats]]:
    """Run `requests` streams, `concurrency` at a time; returns (start, end, stats),
    start and end on CLOCK_MONOTONIC (time.perf_counter)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        sem = asyncio.Semaphore(concurrency)

        async def guarded(i: int) -> StreamStats:
            async with sem:
                return await one_stream(session, url, model, max_tokens, i)

        if warmup:
            await asyncio.gather(*(guarded(-1 - i) for i in range(warmup)))
        start = time.perf_counter()
        stats = await asyncio.gather(*(guarded(i) for i in range(requests)))
        return start, time.perf_counter(), list(stats)
