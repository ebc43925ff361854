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
    """One request's reply messages, numbered from `seq`. A stream that continues one taken
    over from another worker starts where the stored stream stands (`resume`)."""

    def __init__(self, request_id: str, source: str, prompt_tokens: int, n: int,
                 top_logprobs: int = 0, *, epoch: int = 0) -> None:
        self.request_id = request_id
        self.top_logprobs = top_logprobs
        self.source = source
        self.epoch = epoch
        self.prompt_tokens = prompt_tokens
        self.seq = 0  # next message number
        self.finished = False
        self._choices = [_Choice(i) for i in range(n)]

    def resume(self, seq: int, done: dict[int, tuple[int, FinishReason | None]]) -> None:
        """Continue a stored stream: the next `seq`, and per choice its tokens so far and
        finish reason (a finished choice is not sent again)."""
        self.seq = seq
        for index, (num_tokens, reason) in done.items():
            c = self._choices[index]
            c.num_tokens, c.finish_reason = num_tokens, reason
        self.finished = all(c.finish_reason is not None for c in self._choices)

    @property
    def pending(self) -> bool:
        return any(c.dirty for c in self._choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self._choices)

    def unfinished(self) -> list[int]:
        return [c.index for c in self._choices if c.finish_reason is None]

    def num_tokens(self, index: int) -> int:
        return self._choices[index].num_tokens

    def add(self, out: Any, choice: int | None = None) -> None:
        """Take one vLLM RequestOutput (DELTA kind). With `choice`, the output is of an engine
        request that generates that one choice (a continued stream runs one per choice)."""
        for comp in out.outputs:
            c = self._choices[comp.index if choice is None else choice]
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
            if choice is None:
                self.finish()
            else:
                self.finish_choice(choice)

    def finish_choice(self, index: int, reason: FinishReason = "abort") -> None:
        c = self._choices[index]
        if c.finish_reason is None:
            c.finish_reason, c.dirty = reason, True
        self.finished = all(c.finish_reason is not None for c in self._choices)

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
                         epoch=self.epoch, choices=choices, finished=self.finished, usage=usage)
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


class Interrupted(Exception):
    """The worker stopped this request's generation (see services.worker.ownership.Stop)."""


async def pump(outputs: AsyncIterator[Any], stream: ReplyStream, send: Send, window_s: float,
               interrupt: asyncio.Event | None = None) -> asyncio.Future | None:
    """Drive one request to its end; returns the delivery future of the last message.

    `outputs` yields (RequestOutput, choice) pairs (see ReplyStream.add). Setting `interrupt`
    stops reading the engine (closing its generator aborts the engine request) and raises
    Interrupted; what the stream holds unsent stays in it."""
    arrived = asyncio.Event()

    async def read() -> None:
        async for out, choice in outputs:
            stream.add(out, choice)
            arrived.set()

    reader = asyncio.create_task(read())
    stopper = asyncio.create_task(interrupt.wait()) if interrupt is not None else None
    watched = {reader, stopper} if stopper is not None else {reader}
    try:
        while not reader.done():
            waiter = asyncio.create_task(arrived.wait())
            await asyncio.wait({*watched, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if stopper is not None and stopper.done():
                raise Interrupted()
            if reader.done():
                break
            arrived.clear()
            if stream.pending:
                await send(stream.take())  # ordered per partition: the last ack covers it
            # Collect what arrives during the window into the next message.
            await asyncio.wait(watched, timeout=window_s, return_when=asyncio.FIRST_COMPLETED)
        reader.result()  # re-raise an engine error
        if not stream.finished:
            stream.finish()  # the engine ended the stream without a final output
        return await send(stream.take())
    finally:
        for task in (reader, stopper):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
