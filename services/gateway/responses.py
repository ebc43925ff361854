"""TokenDelta → OpenAI response bodies: SSE chunks and whole (non-streamed) responses.

Every SSE event of a stream carries an `id:`, the same on every gateway, so that a client
can resume after the last one it got (services.gateway.resume): a delta's event is the
delta's `seq`; the usage chunk and `[DONE]` follow the last delta's, as an error event
takes its error's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.contracts import ChoiceDelta, StreamOpened, TokenDelta, TokenLogprob, Usage

DONE = b"data: [DONE]\n\n"


def sse(obj: Any, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def done(event_id: int | None = None) -> bytes:
    return DONE if event_id is None else b"id: %d\n" % event_id + DONE


def usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _chat_logprobs(items: list[TokenLogprob] | None) -> dict | None:
    if items is None:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob),
                         "top_logprobs": [entry(tok, lp) for tok, lp in t.top]} for t in items]}


def _completion_logprobs(items: list[TokenLogprob] | None, offset: int) -> dict | None:
    if items is None:
        return None
    offsets, pos = [], offset
    for t in items:
        offsets.append(pos)
        pos += len(t.token)
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [dict(t.top) for t in items], "text_offset": offsets}


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    chars: int = 0  # text already sent, for completion text_offset
    started: bool = False


class Formatter:
    """Per-request response builder for one endpoint (chat or text completion)."""

    def __init__(self, chat: bool, request_id: str, model: str, created: int, n: int,
                 include_usage: bool, event_ids: bool = True) -> None:
        self.chat = chat
        self.event_ids = event_ids  # off: plain `data:` events, for clients that read no other field
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.last_seq = -1  # of the last delta turned into an event
        self._choices = [_Choice() for _ in range(n)]

    @classmethod
    def for_stream(cls, opened: StreamOpened) -> Formatter:
        """The formatter the stream's first gateway used, from the stream's header."""
        return cls(opened.endpoint == "chat", opened.request_id, opened.model, int(opened.created),
                   opened.n, opened.include_usage)

    # -- streaming -----------------------------------------------------------
    def chunks(self, delta: TokenDelta) -> bytes:
        """SSE events for one delta: one event carrying every choice that moved."""
        if delta.usage is not None:
            self.usage = delta.usage
        self.last_seq = delta.seq
        choices = [self._stream_choice(c) for c in delta.choices]
        if not choices:
            return b""
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        return sse(body, delta.seq if self.event_ids else None)

    def _stream_choice(self, c: ChoiceDelta) -> dict:
        state = self._choices[c.index]
        if self.chat:
            delta: dict[str, Any] = {} if state.started else {"role": "assistant"}
            if c.text or not state.started:
                delta["content"] = c.text
            state.started = True
            return {"index": c.index, "delta": delta, "logprobs": _chat_logprobs(c.logprobs),
                    "finish_reason": c.finish_reason}
        out = {"index": c.index, "text": c.text,
               "logprobs": _completion_logprobs(c.logprobs, state.chars),
               "finish_reason": c.finish_reason}
        state.chars += len(c.text)
        return out

    def tail(self, after: int = -1) -> bytes:
        """The usage chunk (if asked for and not past `after`) and the terminator."""
        out, event_id = b"", self.last_seq + 1
        if self.include_usage:
            if event_id > after:
                out += sse({
                    "id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": usage_json(self.usage),
                }, event_id if self.event_ids else None)
            event_id += 1
        return out + done(event_id if self.event_ids else None)

    # -- whole responses -----------------------------------------------------
    def add(self, delta: TokenDelta) -> None:
        if delta.usage is not None:
            self.usage = delta.usage
        for c in delta.choices:
            state = self._choices[c.index]
            state.text.append(c.text)
            if c.logprobs is not None:
                state.logprobs = (state.logprobs or []) + c.logprobs
            if c.finish_reason is not None:
                state.finish_reason = c.finish_reason

    def response(self) -> dict:
        choices = []
        for i, state in enumerate(self._choices):
            text = "".join(state.text)
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": _chat_logprobs(state.logprobs), "finish_reason": state.finish_reason})
            else:
                choices.append({"index": i, "text": text, "finish_reason": state.finish_reason,
                                "logprobs": _completion_logprobs(state.logprobs, 0)})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices,
                "usage": usage_json(self.usage)}


def error_event(body: dict, event_id: int | None = None, after: int = -1) -> bytes:
    """An error after the stream started, then the terminator (the error is left out when
    the client had it already). `event_id` is a stored error's message number; an error the
    gateway made is not in the log, and neither it nor its `[DONE]` takes an id."""
    if event_id is None:
        return sse(body) + DONE
    head = sse(body, event_id) if event_id > after else b""
    return head + done(event_id + 1)
