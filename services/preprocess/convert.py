"""GenerateRequest with image URLs → GenerateRequest with ImageRefs (one converter, one arrow)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from shared.contracts import GenerateRequest, ImagePart, ImageRef, ImageUrlPart, PartsChatPrompt


def image_urls(prompt: PartsChatPrompt) -> Iterator[tuple[str, ImageUrlPart]]:
    """Each image URL with its place in the API request, for error messages."""
    for i, message in enumerate(prompt.messages):
        for j, part in enumerate(message.parts):
            if isinstance(part, ImageUrlPart):
                yield f"messages.{i}.content.{j}.image_url", part


def resolve(req: GenerateRequest, refs: list[ImageRef]) -> GenerateRequest:
    """Replace the image URLs, in order, with the refs of their preprocessed images."""
    assert isinstance(req.prompt, PartsChatPrompt)
    remaining = iter(refs)
    messages = [
        msgspec.structs.replace(m, parts=[
            ImagePart(image=next(remaining)) if isinstance(p, ImageUrlPart) else p for p in m.parts])
        for m in req.prompt.messages
    ]
    return msgspec.structs.replace(req, prompt=msgspec.structs.replace(req.prompt, messages=messages))
