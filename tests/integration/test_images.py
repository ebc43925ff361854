"""Images end to end through the official openai client: one and two images, streaming and
not; the preprocess cache; text on the vision model; routing by `model`."""

from __future__ import annotations

import uuid

import pytest
from transformers import AutoTokenizer

from tests.integration.helpers import eventually, metric
from tests.integration.images import image_part, png_url

pytestmark = pytest.mark.stack

# 64x48 → (64/16)*(48/16) = 12 tokens; 96x96 → 36; 100x75 snaps to 96x80 → 30.
ONE = [{"role": "user", "content": [image_part(png_url(64, 48, seed=1)),
                                     {"type": "text", "text": "What is in this picture?"}]}]
TWO = [{"role": "user", "content": [{"type": "text", "text": "Compare"},
                                     image_part(png_url(96, 96, seed=2)),
                                     {"type": "text", "text": "with"},
                                     image_part(png_url(100, 75, seed=3))]}]


async def _streamed(client, model, messages, max_tokens):
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    text, usage = [], None
    async for chunk in stream:
        usage = chunk.usage or usage
        text.extend(c.delta.content or "" for c in chunk.choices)
    return "".join(text), usage


@pytest.mark.parametrize("messages, image_tokens", [(ONE, 12), (TWO, 36 + 30)], ids=["one", "two"])
async def test_images_stream_and_not(client, stack, messages, image_tokens):
    whole = await client.chat.completions.create(model=stack.vl_model, messages=messages,
                                                 max_tokens=10, temperature=0)
    text, usage = await _streamed(client, stack.vl_model, messages, 10)
    assert whole.choices[0].message.content == text and text
    assert whole.usage.completion_tokens == usage.completion_tokens == 10
    # The prompt is the template's text tokens plus each image's tokens (its placeholder
    # counted once per token), computed here with the model's own tokenizer.
    tok = AutoTokenizer.from_pretrained(str(stack.vl_model_path))
    parts = [p if p["type"] == "text" else {"type": "image"} for p in messages[0]["content"]]
    ids = tok.apply_chat_template([{"role": "user", "content": parts}], tokenize=False,
                                  add_generation_prompt=True)
    n_text = len(tok.encode(ids, add_special_tokens=False))
    n_images = sum(p["type"] == "image" for p in parts)
    assert whole.usage.prompt_tokens == usage.prompt_tokens == n_text - n_images + image_tokens


async def test_the_same_image_is_preprocessed_once(client, stack, http):
    url = png_url(80, 64, seed=uuid.uuid4().int % 10_000_000)  # new to the cache
    pre = stack.metrics_url("preprocess")
    hits = await metric(http, pre, 'sluice_preprocess_images_total{result="hit"}')
    misses = await metric(http, pre, 'sluice_preprocess_images_total{result="miss"}')
    messages = [{"role": "user", "content": [image_part(url), {"type": "text", "text": "again?"}]}]
    first = await client.chat.completions.create(model=stack.vl_model, messages=messages,
                                                 max_tokens=4, temperature=0)
    second = await client.chat.completions.create(model=stack.vl_model, messages=messages,
                                                  max_tokens=4, temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert await metric(http, pre, 'sluice_preprocess_images_total{result="miss"}') == misses + 1
    assert await metric(http, pre, 'sluice_preprocess_images_total{result="hit"}') == hits + 1
    # Twice in one request: decoded once more? No: it is the same content.
    twice = [{"role": "user", "content": [image_part(url), image_part(url)]}]
    await client.chat.completions.create(model=stack.vl_model, messages=twice, max_tokens=2)
    assert await metric(http, pre, 'sluice_preprocess_images_total{result="miss"}') == misses + 1
    assert await metric(http, pre, 'sluice_preprocess_images_total{result="hit"}') == hits + 3


async def test_text_requests_skip_preprocess(client, stack, http):
    pre = stack.metrics_url("preprocess")
    before = await metric(http, pre, "sluice_preprocess_requests_total")
    for content in ("plain text", [{"type": "text", "text": "text as a part"}]):
        resp = await client.chat.completions.create(
            model=stack.vl_model, messages=[{"role": "user", "content": content}], max_tokens=3)
        assert resp.usage.completion_tokens == 3
    await client.chat.completions.create(model=stack.model, max_tokens=3,
                                         messages=[{"role": "user", "content": "text model"}])
    assert await metric(http, pre, "sluice_preprocess_requests_total") == before


async def test_models_are_routed_by_name(client, stack, http):
    """Each model's requests reach its own worker only."""
    text_before = await metric(http, stack.worker_metrics, "sluice_worker_requests_total")
    vl_before = await metric(http, stack.vl_worker_metrics, "sluice_worker_requests_total")
    await client.chat.completions.create(model=stack.vl_model, messages=ONE, max_tokens=2)
    await client.chat.completions.create(model=stack.vl_model, messages=ONE, max_tokens=2)
    await client.chat.completions.create(model=stack.model, max_tokens=2,
                                         messages=[{"role": "user", "content": "hi"}])
    # A worker counts a request once Kafka has its last reply, maybe after the client has it.
    async def counted() -> bool:
        text = await metric(http, stack.worker_metrics, "sluice_worker_requests_total")
        vl = await metric(http, stack.vl_worker_metrics, "sluice_worker_requests_total")
        return (text, vl) == (text_before + 1, vl_before + 2)

    await eventually(counted, timeout=10)
