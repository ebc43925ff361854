"""Wire contracts: every message that crosses a service boundary on Kafka.

Messages are JSON objects encoded with msgspec. Each carries `type` (its tag) and
`v` (the schema version). Readers ignore unknown fields, so adding an optional
field keeps version 1; a breaking change gets a new version number, and a reader
rejects (dead-letters) versions newer than it knows.

Stages, named by their types:
    GenerateRequest  (gateway → tokenizer, topic <prefix>.requests; a request with image
                      URLs goes to <prefix>.preprocess first, which resolves them to
                      ImageRefs in Redis and forwards it to <prefix>.requests)
    TokenizedRequest (tokenizer → the model's workers, topic <prefix>.infer.<pool>.<model>)
    StreamOpened     (gateway → the reply partition of a streamed request, before the request:
                      what any gateway needs to serve the stream again, on a resume)
    TokenDelta | ErrorReply (any stage → the request's reply partition, <prefix>.replies)
    AbortRequest     (gateway → every worker, topic <prefix>.aborts)
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

import msgspec

SCHEMA_VERSION = 1

FinishReason = Literal["stop", "length", "abort", "error"]


class Wire(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every top-level Kafka message."""

    v: int = SCHEMA_VERSION


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatPrompt(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="chat"):
    messages: list[ChatMessage]
    add_generation_prompt: bool = True


class TextPrompt(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="text"):
    text: str


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    """A preprocessed image in Redis (claim check): the content key and its token count."""

    key: str
    width: int
    height: int
    tokens: int  # placeholder tokens the served model's processor gives it
    # The RGB pixels themselves, set only when the image store was unavailable: the request
    # then carries them (within Kafka's message limit) instead of a claim check.
    pixels: bytes | None = None


class TextPart(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="text"):
    text: str


class ImageUrlPart(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="image_url"):
    """An image as the client sent it: a data: URL or an http(s) URL. Preprocess resolves it."""

    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="image"):
    image: ImageRef


Part = TextPart | ImageUrlPart | ImagePart


class PartsMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    parts: list[Part]


class PartsChatPrompt(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="parts_chat"):
    """A chat whose messages are lists of parts, in order: text and images, for a vision model."""

    messages: list[PartsMessage]
    add_generation_prompt: bool = True

    def image_urls(self) -> list[ImageUrlPart]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImageUrlPart)]

    def images(self) -> list[ImageRef]:
        return [p.image for m in self.messages for p in m.parts if isinstance(p, ImagePart)]


Prompt = ChatPrompt | TextPrompt | PartsChatPrompt


def needs_preprocess(prompt: Prompt) -> bool:
    return isinstance(prompt, PartsChatPrompt) and bool(prompt.image_urls())


class Sampling(msgspec.Struct, frozen=True, kw_only=True):
    """Sampling parameters, already validated at the edge. `max_tokens` None = up to the context."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: list[str] = []
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    logprobs: int | None = None


class StreamOpened(Wire, frozen=True, kw_only=True, tag="stream_opened"):
    """A streamed request's header: enough for any gateway to serve the stream again from
    the log (a resume). The gateway that takes the request puts it in the request; the
    worker that starts the stream writes it to the reply partition just ahead of the
    stream's first reply, in the same batch (no produce of its own on the way to the first
    token). Readers take it wherever it is in the partition."""

    request_id: str
    gateway: str
    endpoint: Literal["chat", "completions"]
    model: str
    created: float
    n: int
    include_usage: bool
    owner: str = ""  # SHA-256 (hex) of the API key that started it; "" without keys
    deadline: float | None = None


class GenerateRequest(Wire, frozen=True, kw_only=True, tag="generate_request"):
    request_id: str
    model: str
    prompt: Prompt
    sampling: Sampling
    created: float  # unix seconds, set by the gateway
    # Unix seconds after which nobody waits for the answer: a stage that gets the request
    # later answers with a timeout error and does no work. None: no deadline.
    deadline: float | None = None
    # A request a gateway watches (shared.watches): once no gateway has watched its stream
    # for this many seconds (a client that left and did not resume), the worker abandons it.
    # None: nobody watches it (an integration reading its reply topic itself).
    grace_s: float | None = None
    # A streamed request's header, for resumes (None: not resumable, e.g. not streamed).
    opened: StreamOpened | None = None


class TokenizedRequest(Wire, frozen=True, kw_only=True, tag="tokenized_request"):
    request_id: str
    model: str
    prompt_token_ids: list[int]  # what the model reads: image placeholders expanded
    sampling: Sampling  # max_tokens is always resolved here
    created: float
    images: list[ImageRef] = []  # in the order of their placeholder runs
    deadline: float | None = None  # as in GenerateRequest
    grace_s: float | None = None  # as in GenerateRequest
    opened: StreamOpened | None = None  # as in GenerateRequest


class AbortRequest(Wire, frozen=True, kw_only=True, tag="abort_request"):
    request_id: str
    reason: str = "client_disconnected"


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    token_id: int
    token: str
    logprob: float
    top: list[tuple[str, float]] = []


class ChoiceDelta(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    text: str
    token_ids: list[int]
    num_tokens: int  # cumulative completion tokens of this choice, this delta included
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int


class TokenDelta(Wire, frozen=True, kw_only=True, tag="token_delta"):
    """Tokens for one request. `seq` counts messages per request from 0; `source` names the
    worker instance that produced them and `epoch` its claim on the request: a worker that
    takes over a request from a dead one continues the stream with a higher epoch, at the
    `seq` and token positions (`num_tokens`) where the stream stood (shared.sequence)."""

    request_id: str
    source: str
    seq: int
    epoch: int = 0
    choices: list[ChoiceDelta]
    finished: bool = False
    usage: Usage | None = None  # set on the final message


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None


class ErrorReply(Wire, frozen=True, kw_only=True, tag="error_reply"):
    request_id: str
    source: str
    seq: int
    error: ErrorInfo
    epoch: int = 0


Reply = TokenDelta | ErrorReply


LogRecord = TokenDelta | ErrorReply | StreamOpened  # what a reply partition holds

T = TypeVar("T")


class UnsupportedVersion(ValueError):
    pass


class Codec(Generic[T]):
    """Encode and decode one message type (or tagged union). Decoding is strict about types."""

    def __init__(self, kind: type[T] | object) -> None:
        self._decoder = msgspec.json.Decoder(kind)
        self._encoder = msgspec.json.Encoder()

    def encode(self, msg: T) -> bytes:
        return self._encoder.encode(msg)

    def decode(self, data: bytes | None) -> T:
        """Raises msgspec.DecodeError / ValidationError or UnsupportedVersion."""
        if data is None:  # a tombstone: no envelope at all
            raise msgspec.DecodeError("message has no value")
        msg = self._decoder.decode(data)
        version = getattr(msg, "v", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise UnsupportedVersion(f"schema version {version} is newer than {SCHEMA_VERSION}")
        return msg


DecodeErrors = (msgspec.DecodeError, msgspec.ValidationError, UnsupportedVersion)


ImageRefCodec: Codec[ImageRef] = Codec(ImageRef)
