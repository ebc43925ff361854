"""Prompt → token ids with the served model's own tokenizer and chat template."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
import msgspec
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shared.contracts import (ChatPrompt, ImagePart, ImageUrlPart, PartsChatPrompt, Prompt,
                              TextPart, TextPrompt)
from shared.errors import InvalidRequest
from shared.vision import VisionSpec


class PromptEncoder:
    """One model's tokenizer. `encode` is CPU work: call it from an executor."""

    def __init__(self, path: Path, vision: VisionSpec | None = None) -> None:
        self._tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(path))
        self._vision = vision
        self.fingerprint = _fingerprint(path)

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, TextPrompt):
            # Same as vLLM's completions endpoint: the tokenizer adds its special tokens.
            return list(self._tok.encode(prompt.text, add_special_tokens=True))
        if isinstance(prompt, PartsChatPrompt):
            return self._encode_parts(prompt)
        return self._encode_chat(
            [{"role": m.role, "content": m.content} for m in prompt.messages], prompt)

    def _encode_parts(self, prompt: PartsChatPrompt) -> list[int]:
        """Parts go to the template as vLLM passes them: {"type": "text"|"image"}; then each
        image's placeholder token becomes as many tokens as the model's processor gives it."""
        messages = [{"role": m.role, "content": [_part(p) for p in m.parts]} for m in prompt.messages]
        ids = self._encode_chat(messages, prompt)
        images = prompt.images()
        if not images:
            return ids
        if self._vision is None:
            raise InvalidRequest("This model does not accept image input.", param="messages")
        return expand_images(ids, self._vision.image_token_id, [im.tokens for im in images])

    def _encode_chat(self, messages: list[dict], prompt: ChatPrompt | PartsChatPrompt) -> list[int]:
        try:
            text = self._tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt.add_generation_prompt,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the chat template rejected the messages: {exc}",
                                 param="messages") from exc
        # Like vLLM's chat path: the template already wrote any BOS.
        return list(self._tok.encode(text, add_special_tokens=False))

    def cache_parts(self, prompt: Prompt) -> tuple[bytes, bytes]:
        return self.fingerprint, msgspec.json.encode(prompt)


def _part(part: TextPart | ImageUrlPart | ImagePart) -> dict:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImageUrlPart):
        raise InvalidRequest("image URLs must be preprocessed first: send requests with images "
                             "to the preprocess topic", param="messages")
    return {"type": "image"}


def expand_images(ids: list[int], image_token: int, counts: list[int]) -> list[int]:
    """Each placeholder token → `counts[i]` copies, for the i-th image in order."""
    out: list[int] = []
    seen = 0
    for tok in ids:
        if tok == image_token:
            if seen == len(counts):
                break
            out.extend([image_token] * counts[seen])
            seen += 1
        else:
            out.append(tok)
    if seen != len(counts) or ids.count(image_token) != len(counts):
        raise InvalidRequest(f"the chat template wrote {ids.count(image_token)} image placeholders "
                             f"for {len(counts)} images", param="messages")
    return out


def _fingerprint(path: Path) -> bytes:
    """Identifies the tokenizer files, so a changed tokenizer never hits stale cache entries."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(path).encode())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json", "tokenizer.model"):
        file = path / name
        if file.exists():
            h.update(name.encode())
            h.update(file.read_bytes())
    return h.digest()
