"""Answer with a stream's replies: SSE events as they come, or one whole response.

Both a new generation (services.gateway.generate) and a resumed stream
(services.gateway.resume) answer this way. Errors before the first reply keep their status
code; after it, an error goes out as an SSE error event followed by `[DONE]`. A resumed
stream replays every delta through the formatter (so every event is the one its first
gateway sent) but writes only the events after the client's last one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from shared.contracts import TokenDelta
from shared.errors import SluiceError

from services.gateway.errors import error_body
from services.gateway.replies import Collector
from services.gateway.responses import Formatter, error_event
from services.gateway.state import METRICS

Batches = AsyncIterator[list[TokenDelta]]


@dataclass
class Answer:
    request_id: str
    collector: Collector
    formatter: Formatter
    stream: bool
    after: int = -1  # the last event the client has (a resume): later ones only
    headers: dict[str, str] = field(default_factory=dict)


def tokens(batch: list[TokenDelta]) -> int:
    return sum(len(c.token_ids) for d in batch for c in d.choices)


async def prepare(request: web.Request, answer: Answer) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "X-Request-Id": answer.request_id, **answer.headers, "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    return response


async def stream(request: web.Request, response: web.StreamResponse, answer: Answer,
                 first: list[TokenDelta], batches: Batches) -> None:
    metrics = request.app[METRICS]
    fmt, after = answer.formatter, answer.after
    try:
        batch = first
        while True:
            # One write per batch of deltas: SSE events are joined, not written one by one.
            events = [fmt.chunks(d) for d in batch]
            out = b"".join(e for d, e in zip(batch, events) if d.seq > after)
            if out:
                await response.write(out)
            metrics.completion_tokens.inc(tokens([d for d in batch if d.seq > after]))
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                break
        await response.write(fmt.tail(after))
    except SluiceError as exc:
        # Headers are gone already: the error travels as an SSE event, then [DONE].
        event_id = answer.collector.error_seq if fmt.event_ids else None
        await response.write(error_event(error_body(exc), event_id, after))
        raise
    finally:
        await batches.aclose()
    await response.write_eof()


async def collect(request: web.Request, answer: Answer, first: list[TokenDelta],
                  batches: Batches) -> web.Response:
    fmt = answer.formatter
    n_tokens = _absorb(fmt, first)
    async for batch in batches:
        n_tokens += _absorb(fmt, batch)
    request.app[METRICS].completion_tokens.inc(n_tokens)
    return web.Response(body=orjson.dumps(fmt.response()), content_type="application/json",
                        headers={"X-Request-Id": answer.request_id, **answer.headers})


def _absorb(fmt: Formatter, batch: list[TokenDelta]) -> int:
    for delta in batch:
        fmt.add(delta)
    return tokens(batch)
