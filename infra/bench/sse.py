"""The one SSE reader the benchmark clients share: post a streaming chat, yield each event."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import orjson


class StreamFailed(Exception):
    """The server answered with an error status (its body, shortened, is the message)."""


async def chat_events(session: aiohttp.ClientSession, url: str,
                      body: dict) -> AsyncIterator[tuple[float, dict]]:
    """POST `body` to `url`/v1/chat/completions; yield (arrival time on perf_counter, parsed
    chunk) for every `data: {...}` event, the usage and error chunks included."""
    async with session.post(f"{url}/v1/chat/completions", data=orjson.dumps(body),
                            headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise StreamFailed(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if line.startswith(b"data: {"):
                yield time.perf_counter(), orjson.loads(line[6:])


def content(chunk: dict) -> str | None:
    """The first choice's text in a chunk, if any."""
    choices = chunk.get("choices")
    return choices[0]["delta"].get("content") if choices else None
