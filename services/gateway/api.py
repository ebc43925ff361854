"""OpenAI API request models (HTTP edge only) and their converters to wire messages."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts import (ChatMessage, ChatPrompt, GenerateRequest, ImageUrlPart, Part,
                              PartsChatPrompt, PartsMessage, Sampling, TextPrompt)
from shared.contracts import TextPart as WireTextPart
from shared.errors import InvalidRequest
from shared.settings import ModelSpec


class _Model(BaseModel):
    # Unknown fields are ignored (SDKs send extras); known ones must have the right JSON type.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageUrl(_Model):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class _Generation(_Model):
    # OpenAI marks most fields nullable: null means "the default".
    model: str
    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    ignore_eos: bool | None = None  # vLLM extension, used by load generators
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted only in the forms that change nothing; anything else is refused, not ignored.
    logit_bias: dict[str, float] | None = None
    response_format: dict | None = None
    tools: list | None = None
    functions: list | None = None

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _refuse_unsupported(self) -> None:
        if self.tools or self.functions:
            raise InvalidRequest("tool calling is not supported", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidRequest("only response_format type 'text' is supported",
                                 param="response_format")
        if self.logit_bias:
            raise InvalidRequest("logit_bias is not supported", param="logit_bias")

    def sampling(self, max_tokens: int | None, logprobs: int | None, max_n: int) -> Sampling:
        self._refuse_unsupported()
        n = self.choices
        if n > max_n:
            raise InvalidRequest(f"n must be at most {max_n}", param="n")
        min_tokens = self.min_tokens or 0
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 16 or any(not s for s in stop):
            raise InvalidRequest("stop takes up to 16 non-empty strings", param="stop")
        if max_tokens is not None and min_tokens > max_tokens:
            raise InvalidRequest("min_tokens must not exceed max_tokens", param="min_tokens")
        top_p = 1.0 if self.top_p is None else self.top_p
        top_k = max(self.top_k or 0, 0)
        if top_p == 0:  # OpenAI accepts 0: only the most likely token
            top_p, top_k = 1.0, 1
        return Sampling(
            n=n,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            ignore_eos=bool(self.ignore_eos),
            logprobs=logprobs,
        )


class ChatCompletionRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Generation):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None


def parse(kind: type[_Generation], body: bytes) -> _Generation:
    try:
        return kind.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise InvalidRequest(f"The request body is not valid JSON: {err['msg']}") from None
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"Invalid value for '{loc}': {err['msg']}", param=loc or None) from None


def _role(msg: Message) -> Literal["system", "user", "assistant"]:
    return "system" if msg.role == "developer" else msg.role


def _text_of(msg: Message, index: int, model: str) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for j, part in enumerate(msg.content):
        if isinstance(part, ImagePart):
            raise InvalidRequest(f"The model `{model}` does not accept image input.",
                                 param=f"messages.{index}.content.{j}")
        texts.append(part.text)
    return "\n".join(texts)  # as vLLM joins text parts


def _parts_of(msg: Message, index: int) -> list[Part]:
    if msg.content is None:
        return []
    if isinstance(msg.content, str):
        return [WireTextPart(text=msg.content)]
    parts: list[Part] = []
    for j, part in enumerate(msg.content):
        if isinstance(part, TextPart):
            parts.append(WireTextPart(text=part.text))
            continue
        if msg.role != "user":
            raise InvalidRequest("images are accepted in user messages only",
                                 param=f"messages.{index}.content.{j}")
        parts.append(ImageUrlPart(url=part.image_url.url, detail=part.image_url.detail))
    return parts


def _chat_prompt(req: ChatCompletionRequest, spec: ModelSpec,
                 max_images: int) -> ChatPrompt | PartsChatPrompt:
    """A vision model gets content parts as sent (text and images, in order); a text model
    gets each message's text joined, and a 400 for an image."""
    if spec.vision is None or all(isinstance(m.content, str | None) for m in req.messages):
        return ChatPrompt(messages=[ChatMessage(role=_role(m), content=_text_of(m, i, req.model))
                                    for i, m in enumerate(req.messages)])
    prompt = PartsChatPrompt(messages=[PartsMessage(role=_role(m), parts=_parts_of(m, i))
                                       for i, m in enumerate(req.messages)])
    count = len(prompt.image_urls())
    if count > max_images:
        raise InvalidRequest(f"at most {max_images} images are accepted per request; this one "
                             f"has {count}", param="messages")
    return prompt


def chat_to_generate(req: ChatCompletionRequest, request_id: str, created: float, max_n: int,
                     spec: ModelSpec, max_images: int, deadline: float | None = None) -> GenerateRequest:
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    max_tokens = req.max_completion_tokens or req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return GenerateRequest(
        request_id=request_id, model=req.model, created=created, deadline=deadline,
        prompt=_chat_prompt(req, spec, max_images), sampling=req.sampling(max_tokens, logprobs, max_n),
    )


def completion_to_generate(req: CompletionRequest, request_id: str, created: float, max_n: int,
                           spec: ModelSpec, max_images: int,
                           deadline: float | None = None) -> GenerateRequest:
    if req.echo:
        raise InvalidRequest("echo is not supported", param="echo")
    if req.suffix:
        raise InvalidRequest("suffix is not supported", param="suffix")
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise InvalidRequest("send one prompt per request", param="prompt")
        prompt = req.prompt[0]
    else:
        prompt = req.prompt
    if not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    return GenerateRequest(
        request_id=request_id, model=req.model, created=created, deadline=deadline,
        prompt=TextPrompt(text=prompt), sampling=req.sampling(req.max_tokens, req.logprobs, max_n),
    )
