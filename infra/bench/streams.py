"""Streamed completions as a client sees them, for the fault tests and the failover
benchmark: every token (with logprobs, one entry per token), when each chunk arrived,
errors, the final usage, and how far each stream had got when something happened."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson


@dataclass
class Stream:
    max_tokens: int
    request_id: str = ""
    status: int = 0
    tokens: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    finish: str | None = None
    usage: dict | None = None
    done: bool = False  # [DONE] arrived
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each chunk

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.arrivals, self.arrivals[1:])), default=0.0)

    def complete(self) -> bool:
        """Exactly its tokens, no error, properly ended."""
        return (self.status == 200 and not self.errors and self.done and self.finish == "length"
                and len(self.tokens) == self.max_tokens
                and self.usage is not None and self.usage["completion_tokens"] == self.max_tokens)


class Progress:
    """Wakes a waiter once every stream has at least `n` tokens."""

    def __init__(self, streams: list[Stream]) -> None:
        self.streams = streams
        self._changed = asyncio.Event()

    def moved(self) -> None:
        self._changed.set()

    async def all_have(self, n: int, timeout: float = 120) -> None:
        async def wait() -> None:
            while not all(len(s.tokens) >= n for s in self.streams):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def snapshot(self) -> list[list[str]]:
        return [list(s.tokens) for s in self.streams]


async def complete(http: aiohttp.ClientSession, model: str, prompt: str, stream: Stream,
                   progress: Progress | None = None, headers: dict | None = None) -> Stream:
    """One greedy completion of exactly `stream.max_tokens` tokens (EOS ignored)."""
    body = {"model": model, "prompt": prompt, "max_tokens": stream.max_tokens, "logprobs": 0,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.post("/v1/completions", data=orjson.dumps(body),
                         headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        stream.status = resp.status
        stream.request_id = resp.headers.get("X-Request-Id", "")
        if resp.status != 200:
            stream.errors.append(await resp.json())
            return stream
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                stream.done = True
                break
            event = orjson.loads(line[6:])
            if "error" in event:
                stream.errors.append(event)
                continue
            stream.usage = event.get("usage") or stream.usage
            count = 0
            for choice in event["choices"]:
                stream.tokens += choice["logprobs"]["tokens"]
                count += len(choice["logprobs"]["tokens"])
                stream.finish = choice["finish_reason"] or stream.finish
            if not count:
                continue  # the usage chunk
            stream.arrivals.append(time.monotonic())
            stream.chunk_tokens.append(count)
            if progress is not None:
                progress.moved()
    return stream


def start_streams(http: aiohttp.ClientSession, model: str, lengths: list[int],
                  tag: str) -> tuple[list[asyncio.Task], Progress]:
    streams = [Stream(n) for n in lengths]
    progress = Progress(streams)
    tasks = [asyncio.create_task(complete(http, model, f"{tag} story {i}: once upon a time", s, progress))
             for i, s in enumerate(streams)]
    return tasks, progress
