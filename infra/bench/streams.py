"""Streamed completions as a client sees them, for the fault tests and the fault benchmark:
every token (with logprobs, one entry per token), when each chunk arrived, errors, the
final usage, the last event id, and how far each stream had got when something happened.
A stream cut off (its gateway died, or the client let go) can be resumed on any gateway
from its last event (`resume`), as a client of GET /v1/streams/{id} would."""

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
    last_id: int = -1  # the id of the last event received
    ids: list[int] = field(default_factory=list)  # every event id received, in order
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each chunk
    resumes: list[float] = field(default_factory=list)  # resume request → its first event (s)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def response_id(self) -> str:
        return f"cmpl-{self.request_id}"

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


async def read(resp: aiohttp.ClientResponse, stream: Stream, progress: Progress | None = None,
               stop_at: int | None = None, started: float | None = None) -> None:
    """Read SSE events into `stream` until [DONE], the connection's end, or (`stop_at`) once
    the stream has that many tokens. `started`: when a resume was asked for."""
    event_id = None
    async for raw in resp.content:
        line = raw.strip()
        if line.startswith(b"id: "):
            event_id = int(line[4:])
            continue
        if not line.startswith(b"data: "):
            continue
        if event_id is not None:  # an event without an id keeps the last one (as in SSE)
            stream.last_id = event_id
            stream.ids.append(event_id)
            event_id = None
            if started is not None:
                stream.resumes.append(time.monotonic() - started)
                started = None
        if line == b"data: [DONE]":
            stream.done = True
            return
        event = orjson.loads(line[6:])
        if "error" in event:
            stream.errors.append(event)
            continue
        stream.usage = event.get("usage") or stream.usage
        count = 0
        for choice in event["choices"]:
            got = (choice["logprobs"] or {}).get("tokens", [])  # none on an abort's last chunk
            stream.tokens += got
            count += len(got)
            stream.finish = choice["finish_reason"] or stream.finish
        if not count:
            continue  # the usage chunk
        stream.arrivals.append(time.monotonic())
        stream.chunk_tokens.append(count)
        if progress is not None:
            progress.moved()
        if stop_at is not None and len(stream.tokens) >= stop_at:
            return


async def complete(http: aiohttp.ClientSession, model: str, prompt: str, stream: Stream,
                   progress: Progress | None = None, headers: dict | None = None,
                   stop_at: int | None = None, url: str = "") -> Stream:
    """One greedy completion of exactly `stream.max_tokens` tokens (EOS ignored); with
    `stop_at`, the client lets go once it has that many. `url`: another gateway's."""
    body = {"model": model, "prompt": prompt, "max_tokens": stream.max_tokens, "logprobs": 0,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    try:
        async with http.post(f"{url}/v1/completions", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json", **(headers or {})}) as resp:
            stream.status = resp.status
            stream.request_id = resp.headers.get("X-Request-Id", "")
            if resp.status != 200:
                stream.errors.append(await resp.json())
                return stream
            await read(resp, stream, progress, stop_at)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
        pass  # cut off (its gateway died): a resume may go on from stream.last_id
    return stream


async def resume(http: aiohttp.ClientSession, stream: Stream, url: str = "",
                 progress: Progress | None = None, headers: dict | None = None) -> int:
    """Go on with a stream from its last event, on the gateway at `url`; the HTTP status."""
    started = time.monotonic()
    event = {"Last-Event-ID": str(stream.last_id)} if stream.last_id >= 0 else {}
    try:
        async with http.get(f"{url}/v1/streams/{stream.response_id}",
                            headers={**event, **(headers or {})}) as resp:
            stream.status = stream.status or resp.status  # a stream read from its start
            if resp.status != 200:
                stream.errors.append(await resp.json())
                return resp.status
            await read(resp, stream, progress, started=started)
            return resp.status
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
        return 0


def start_streams(http: aiohttp.ClientSession, model: str, lengths: list[int],
                  tag: str, url: str = "") -> tuple[list[asyncio.Task], Progress]:
    streams = [Stream(n) for n in lengths]
    progress = Progress(streams)
    tasks = [asyncio.create_task(complete(http, model, f"{tag} story {i}: once upon a time", s,
                                          progress, url=url))
             for i, s in enumerate(streams)]
    return tasks, progress
