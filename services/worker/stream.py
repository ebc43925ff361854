"""Engine outputs → TokenDelta messages: numbered, with cumulative counts, coalesced.

`ReplyStream` accumulates the engine's delta outputs for one request; `pump` decides
when to emit. The first tokens go out at once; tokens that arrive within the
coalescing window after a send share the next message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import ChoiceDelta, FinishReason, TokenDelta, TokenLogprob, Usage
from shared.errors import InternalError

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass(slots=True)
class _Choice:
    index: int
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    num_tokens: int = 0
    finish_reason: FinishReason | None = None
    dirty: bool = False


class ReplyStream:
    def __init__(self, request_id: str, source: str, prompt_tokens: int, n: int,
                 top_logprobs: int = 0) -> None:
        self.request_id = request_id
        self.top_logprobs = top_logprobs
        self.source = source
        self.prompt_tokens = prompt_tokens
        self.seq = 0  # next message number
        self.finished = False
        self._choices = [_Choice(i) for i in range(n)]

    @property
    def pending(self) -> bool:
        return any(c.dirty for c in self._choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self._choices)

    def add(self, out: Any) -> None:
        """Take one vLLM RequestOutput (DELTA kind)."""
        for comp in out.outputs:
            c = self._choices[comp.index]
            ids = list(comp.token_ids)
            if comp.text:
                c.text.append(comp.text)
            if ids:
                c.token_ids.extend(ids)
                c.num_tokens += len(ids)
                if comp.logprobs:
                    c.logprobs = (c.logprobs or []) + _logprobs(ids, comp.logprobs, self.top_logprobs)
            if comp.finish_reason is not None:
                if str(comp.finish_reason) == "error":
                    raise InternalError("the engine failed while generating this request")
                c.finish_reason = _FINISH.get(str(comp.finish_reason), "stop")
            c.dirty = c.dirty or bool(ids) or bool(comp.text) or comp.finish_reason is not None
        if out.finished:
            self.finish()

    def finish(self, reason: FinishReason = "abort") -> None:
        """Mark the request over; choices without a finish reason get `reason`."""
        self.finished = True
        for c in self._choices:
            if c.finish_reason is None:
                c.finish_reason = reason
                c.dirty = True

    def take(self) -> TokenDelta:
        """The next message: everything accumulated since the last one."""
        choices = []
        for c in self._choices:
            if not c.dirty:
                continue
            choices.append(ChoiceDelta(
                index=c.index, text="".join(c.text), token_ids=c.token_ids, num_tokens=c.num_tokens,
                finish_reason=c.finish_reason, logprobs=c.logprobs,
            ))
            c.text, c.token_ids, c.logprobs, c.dirty = [], [], None, False
        usage = None
        if self.finished:
            usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)
        msg = TokenDelta(request_id=self.request_id, source=self.source, seq=self.seq,
                         choices=choices, finished=self.finished, usage=usage)
        self.seq += 1
        return msg


def _logprobs(ids: list[int], entries: Any, k: int) -> list[TokenLogprob]:
    """vLLM gives, per position, the sampled token plus the top k (by rank, from 1)."""
    out = []
    for tid, entry in zip(ids, entries):
        chosen = entry[tid]
        ranked = sorted((lp for lp in entry.values() if lp.rank is not None and lp.rank <= k),
                        key=lambda lp: lp.rank)
        out.append(TokenLogprob(
            token_id=tid, token=chosen.decoded_token or "", logprob=float(chosen.logprob),
            top=[(lp.decoded_token or "", float(lp.logprob)) for lp in ranked],
        ))
    return out


Send = Callable[[TokenDelta], Awaitable[asyncio.Future | None]]


async def pump(outputs: AsyncIterator[Any], stream: ReplyStream, send: Send,
               window_s: float) -> asyncio.Future | None:
    """Drive one request to its end; returns the delivery future of the last message."""
    arrived = asyncio.Event()

    async def read() -> None:
        async for out in outputs:
            stream.add(out)
            arrived.set()

    reader = asyncio.create_task(read())
    try:
        while not reader.done():
            waiter = asyncio.create_task(arrived.wait())
            await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if reader.done():
                break
            arrived.clear()
            if stream.pending:
                await send(stream.take())  # ordered per partition: the last ack covers it
            # Collect what arrives during the window into the next message.
            await asyncio.wait({reader}, timeout=window_s)
        reader.result()  # re-raise an engine error
        if not stream.finished:
            stream.finish()  # the engine ended the stream without a final output
        return await send(stream.take())
    finally:
        if not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
