"""At temperature 0, one request at a time, the pipeline returns exactly what vLLM's offline
engine returns for the same messages: not one token added, dropped or reordered."""

import pytest

from tests.integration.helpers import offline_reference

pytestmark = pytest.mark.stack

CHATS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "You answer in French."},
     {"role": "user", "content": "What is the capital of Italy?"}],
    [{"role": "user", "content": "Write a haiku about rivers."},
     {"role": "assistant", "content": "Water finds its way"},
     {"role": "user", "content": "Another one, about stones."}],
    [{"role": "user", "content": "def fib(n):\n    # complete this Python function"}],
    [{"role": "user", "content": "GNU GENERAL PUBLIC LICENSE Version 3, 29 June 2007"}],
    [{"role": "user", "content": "Ünïcödé ✓ — 漢字 and emoji 🚀 in one prompt"}],
]
PROMPTS = ["The quick brown fox", "Permission is hereby granted, free of charge,"]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
async def reference(stack):
    cases = [{"messages": m, "max_tokens": MAX_TOKENS} for m in CHATS]
    cases += [{"prompt": p, "max_tokens": MAX_TOKENS} for p in PROMPTS]
    return await offline_reference(stack, stack.model_path, cases, "text")


async def _stream_chat(client, model, messages):
    stream = await client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                  max_tokens=MAX_TOKENS, stream=True,
                                                  stream_options={"include_usage": True})
    parts, usage = [], None
    async for chunk in stream:
        usage = chunk.usage or usage
        parts.extend(c.delta.content or "" for c in chunk.choices)
    return "".join(parts), usage


async def test_chat_matches_offline_engine_token_for_token(client, stack, reference):
    for messages, ref in zip(CHATS, reference):
        whole = await client.chat.completions.create(model=stack.model, messages=messages,
                                                     temperature=0, max_tokens=MAX_TOKENS)
        streamed, usage = await _stream_chat(client, stack.model, messages)
        assert whole.choices[0].message.content == ref["text"], messages
        assert streamed == ref["text"], messages
        assert whole.usage.completion_tokens == len(ref["token_ids"]) == usage.completion_tokens
        assert whole.usage.prompt_tokens == ref["prompt_tokens"] == usage.prompt_tokens
        assert whole.choices[0].finish_reason == ref["finish_reason"]


async def test_completions_match_offline_engine(client, stack, reference):
    for prompt, ref in zip(PROMPTS, reference[len(CHATS):]):
        whole = await client.completions.create(model=stack.model, prompt=prompt, temperature=0,
                                                max_tokens=MAX_TOKENS)
        stream = await client.completions.create(model=stack.model, prompt=prompt, temperature=0,
                                                 max_tokens=MAX_TOKENS, stream=True)
        streamed = "".join([c.text async for chunk in stream for c in chunk.choices])
        assert whole.choices[0].text == streamed == ref["text"], prompt
        assert whole.usage.completion_tokens == len(ref["token_ids"])
