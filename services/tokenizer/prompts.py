"""Prompt → token ids with the served model's own tokenizer and chat template."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
import msgspec
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from shared.contracts import ChatPrompt, Prompt, TextPrompt
from shared.errors import InvalidRequest


class PromptEncoder:
    """One model's tokenizer. `encode` is CPU work: call it from an executor."""

    def __init__(self, path: Path) -> None:
        self._tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(path))
        self.fingerprint = _fingerprint(path)

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, TextPrompt):
            # Same as vLLM's completions endpoint: the tokenizer adds its special tokens.
            return list(self._tok.encode(prompt.text, add_special_tokens=True))
        return self._encode_chat(prompt)

    def _encode_chat(self, prompt: ChatPrompt) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
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
