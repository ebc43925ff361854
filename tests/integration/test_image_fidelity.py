"""At temperature 0, one request at a time, chats with images return exactly what vLLM's
offline engine returns for the same messages and images."""

from __future__ import annotations

import pytest

from tests.integration.helpers import offline_reference
from tests.integration.images import data_url, encode, image_part, jpeg_rotated, picture, png_url

pytestmark = pytest.mark.stack

MAX_TOKENS = 24


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


# Every image here is within the model's pixel bounds, so neither side resizes it
# (the model's processor snaps 100x75 to its grid, in both).
CHATS = {
    "one png": [{"role": "user", "content": [image_part(png_url(64, 48, seed=11)),
                                              _text("Describe the image.")]}],
    "two images, system prompt": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [_text("First"), image_part(png_url(96, 96, seed=12)),
                                     _text("then"), image_part(png_url(100, 75, seed=13))]}],
    "jpeg with exif rotation": [{"role": "user", "content": [
        image_part(data_url(jpeg_rotated(64, 32, seed=14), "image/jpeg")), _text("Which way up?")]}],
    "rgba png": [{"role": "user", "content": [
        image_part(data_url(encode(picture(48, 48, seed=15, mode="RGBA"), "PNG"), "image/png"))]}],
    "gif": [{"role": "user", "content": [
        _text("A GIF:"), image_part(data_url(encode(picture(40, 56, seed=16), "GIF"), "image/gif"))]}],
    "multi-turn": [
        {"role": "user", "content": [image_part(png_url(32, 32, seed=17)), _text("What is it?")]},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "And its colour?"}],
    "text only": [{"role": "user", "content": "No image in this one."}],
}
# Larger than the model's 256x256 bound: preprocess resizes it before the worker sees it,
# and vLLM alone resizes it inside its processor. The token counts must agree.
OVERSIZED = [{"role": "user", "content": [image_part(png_url(400, 300, seed=18)), _text("Big")]}]


@pytest.fixture(scope="module")
async def reference(stack):
    cases = [{"messages": m, "max_tokens": MAX_TOKENS} for m in [*CHATS.values(), OVERSIZED]]
    results = await offline_reference(stack, stack.vl_model_path, cases, "vision")
    return dict(zip([*CHATS, "oversized"], results))


@pytest.mark.parametrize("name", list(CHATS))
async def test_matches_offline_engine(client, stack, reference, name):
    ref = reference[name]
    whole = await client.chat.completions.create(model=stack.vl_model, messages=CHATS[name],
                                                 temperature=0, max_tokens=MAX_TOKENS)
    stream = await client.chat.completions.create(
        model=stack.vl_model, messages=CHATS[name], temperature=0, max_tokens=MAX_TOKENS,
        stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    async for chunk in stream:
        usage = chunk.usage or usage
        parts.extend(c.delta.content or "" for c in chunk.choices)
    assert whole.choices[0].message.content == "".join(parts) == ref["text"]
    assert whole.usage.prompt_tokens == usage.prompt_tokens == ref["prompt_tokens"]
    assert whole.usage.completion_tokens == usage.completion_tokens == len(ref["token_ids"])
    assert whole.choices[0].finish_reason == ref["finish_reason"]


async def test_oversized_image_counts_the_same_tokens(client, stack, reference):
    resp = await client.chat.completions.create(model=stack.vl_model, messages=OVERSIZED,
                                                temperature=0, max_tokens=MAX_TOKENS)
    assert resp.usage.prompt_tokens == reference["oversized"]["prompt_tokens"]
    assert resp.usage.completion_tokens == MAX_TOKENS or resp.choices[0].finish_reason == "stop"


async def test_different_images_give_different_outputs(reference):
    """Guards the test itself: the model does look at the pixels."""
    texts = {reference[name]["text"] for name in ("one png", "rgba png", "gif")}
    assert len(texts) == 3
