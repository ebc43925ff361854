"""32 concurrent streams, each with its own max_tokens: no cross-talk, exact counts."""

import asyncio

import pytest

pytestmark = pytest.mark.stack

STREAMS = 32


async def _one(client, model, i):
    max_tokens = 10 + 3 * i  # distinct per stream
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Stream number {i}: tell me a story."}],
        max_tokens=max_tokens, temperature=0, stream=True, logprobs=True,
        stream_options={"include_usage": True})
    ids, tokens, finish, usage = set(), 0, None, None
    async for chunk in stream:
        ids.add(chunk.id)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            tokens += len(choice.logprobs.content) if choice.logprobs else 0
            finish = choice.finish_reason or finish
    return max_tokens, ids, tokens, finish, usage


async def test_concurrent_streams_get_exactly_their_own_tokens(client, stack):
    results = await asyncio.gather(*(_one(client, stack.model, i) for i in range(STREAMS)))
    all_ids = set()
    for max_tokens, ids, tokens, finish, usage in results:
        assert len(ids) == 1, "chunks of one stream carried several ids"
        all_ids |= ids
        if finish == "length":
            assert tokens == max_tokens
        else:
            assert finish == "stop" and tokens < max_tokens
        assert usage.completion_tokens == tokens
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(all_ids) == STREAMS
    assert sum(r[3] == "length" for r in results) > STREAMS // 2  # EOS is rare with random weights
