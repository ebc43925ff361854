"""TokenizedRequest → the engine's prompt: token ids plus the request's images (from Redis,
or carried in the request when the image store was unavailable)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from shared.contracts import ImageRef, TokenizedRequest
from shared.errors import InternalError, InvalidRequest, Unavailable
from shared.images import ImageStore
from shared.vision import VisionSpec


def collapse_images(ids: list[int], image_token: int, refs: list[ImageRef]) -> list[int]:
    """vLLM expands each image placeholder itself, even in a token prompt, so the engine
    gets one placeholder per image; the request carries the expanded prompt (what the
    model reads), so check each run against the image it stands for."""
    out: list[int] = []
    k = i = 0
    while i < len(ids):
        if ids[i] != image_token:
            out.append(ids[i])
            i += 1
            continue
        if k == len(refs):
            raise InvalidRequest("the prompt has more image placeholders than images")
        need = refs[k].tokens
        if ids[i:i + need] != [image_token] * need:
            raise InvalidRequest(f"image {k} needs {need} placeholder tokens in the prompt")
        out.append(image_token)
        i += need
        k += 1
    if k != len(refs):
        raise InvalidRequest(f"the prompt has placeholders for {k} of its {len(refs)} images")
    return out


async def engine_prompt(req: TokenizedRequest, vision: VisionSpec | None,
                        store: ImageStore, prefix: Sequence[int] = ()) -> dict[str, Any]:
    """A vLLM TokensPrompt (a TypedDict) for the request; `prefix` (tokens generated before a
    takeover) follows the prompt."""
    if not req.images:
        return {"prompt_token_ids": [*req.prompt_token_ids, *prefix]}
    if vision is None:
        raise InvalidRequest(f"The model `{req.model}` does not accept image input.", param="messages")
    ids = collapse_images(req.prompt_token_ids, vision.image_token_id, req.images)
    images = await asyncio.gather(*(_load(store, ref) for ref in req.images))
    return {
        "prompt_token_ids": [*ids, *prefix],
        "multi_modal_data": {"image": list(images)},
        # The content key names the image: vLLM's processor cache reuses its work for a repeat.
        "multi_modal_uuids": {"image": [ref.key for ref in req.images]},
    }


async def _load(store: ImageStore, ref: ImageRef):
    from PIL import Image

    rgb = ref.pixels if ref.pixels is not None else await store.pixels(ref.key)
    if rgb is None:
        raise Unavailable("an image of this request expired from the image store before a worker "
                          "took it; send the request again", retry_after=1)
    if len(rgb) != ref.width * ref.height * 3:
        raise InternalError(f"stored image {ref.key} does not match its size")
    return Image.frombuffer("RGB", (ref.width, ref.height), rgb, "raw", "RGB", 0, 1)
