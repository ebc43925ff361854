"""GenerateRequest → TokenizedRequest: context-length check and max_tokens resolution."""

from __future__ import annotations

import msgspec

from shared.contracts import GenerateRequest, PartsChatPrompt, TokenizedRequest
from shared.errors import ContextLengthExceeded
from shared.settings import ModelSpec


def to_tokenized(req: GenerateRequest, ids: list[int], spec: ModelSpec) -> TokenizedRequest:
    limit = spec.max_model_len
    n_prompt = len(ids)
    if n_prompt >= limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"resulted in {n_prompt} tokens, which leaves no room for the completion. "
            "Please reduce the length of the prompt.",
            param="messages",
        )
    max_tokens = req.sampling.max_tokens
    if max_tokens is None:
        max_tokens = limit - n_prompt
    elif n_prompt + max_tokens > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
            "completion). Please reduce the length of the prompt or of max_tokens.",
            param="max_tokens",
        )
    return TokenizedRequest(
        request_id=req.request_id,
        model=req.model,
        prompt_token_ids=ids,
        sampling=msgspec.structs.replace(req.sampling, max_tokens=max_tokens),
        created=req.created,
        images=req.prompt.images() if isinstance(req.prompt, PartsChatPrompt) else [],
        deadline=req.deadline,
        grace_s=req.grace_s,
        opened=req.opened,
    )
