"""The official openai client, streaming and not, on both endpoints; usage adds up."""

import pytest

pytestmark = pytest.mark.stack

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three rivers."}]


async def test_chat_non_streaming(client, stack):
    resp = await client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=12,
                                                temperature=0)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == stack.model
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 12 and resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    if choice.finish_reason == "length":
        assert resp.usage.completion_tokens == 12


async def test_chat_streaming_with_usage(client, stack):
    stream = await client.chat.completions.create(
        model=stack.model, messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True}, logprobs=True)
    text, tokens, finish, usage, roles = [], 0, None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        (choice,) = chunk.choices
        if choice.delta.role:
            roles.append(choice.delta.role)
        text.append(choice.delta.content or "")
        tokens += len(choice.logprobs.content) if choice.logprobs else 0
        finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert finish in ("stop", "length") and usage is not None
    assert usage.completion_tokens == tokens  # one logprob entry per delivered token
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Same request, not streamed: identical text.
    whole = await client.chat.completions.create(model=stack.model, messages=MESSAGES,
                                                 max_tokens=16, temperature=0)
    assert "".join(text) == whole.choices[0].message.content


async def test_completions_non_streaming_and_streaming(client, stack):
    whole = await client.completions.create(model=stack.model, prompt="The river", max_tokens=10,
                                            temperature=0)
    assert whole.object == "text_completion" and whole.usage.completion_tokens <= 10
    stream = await client.completions.create(model=stack.model, prompt="The river", max_tokens=10,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True})
    parts, usage = [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.text)
    assert "".join(parts) == whole.choices[0].text
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


async def _text(client, stack, **kwargs) -> str:
    resp = await client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=20,
                                                **kwargs)
    return resp.choices[0].message.content


async def test_sampling_parameters_are_honoured(client, stack):
    greedy = await _text(client, stack, temperature=0)
    # seed: the same seed gives the same sample; different seeds (almost surely) differ.
    seeds = (1, 2, 3, 4)
    free = [await _text(client, stack, temperature=1.0, seed=s) for s in seeds]
    assert free[0] == await _text(client, stack, temperature=1.0, seed=1)
    assert len(set(free)) == len(seeds)
    # top_k=1 and a tiny top_p leave only the most likely token(s): the seed stops mattering
    # (but for exact bf16 ties, which these random weights do have now and then).
    for narrow in ({"extra_body": {"top_k": 1}}, {"top_p": 1e-6}):
        outs = {await _text(client, stack, temperature=1.0, seed=s, **narrow) for s in seeds}
        assert len(outs) <= 2, narrow
    # Penalties change greedy text on this model, which repeats itself.
    assert await _text(client, stack, temperature=0, frequency_penalty=2.0) != greedy
    assert await _text(client, stack, temperature=0, presence_penalty=2.0) != greedy
    # stop: generation ends before the stop string, with finish_reason "stop".
    first_words = greedy.split()[:2]
    stopped = await client.chat.completions.create(
        model=stack.model, messages=MESSAGES, max_tokens=20, temperature=0, stop=[first_words[-1]])
    assert stopped.choices[0].finish_reason == "stop"
    assert first_words[-1] not in stopped.choices[0].message.content


async def test_n_choices(client, stack):
    resp = await client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=6,
                                                n=3, temperature=1.0, seed=7, logprobs=True)
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    counts = [len(c.logprobs.content) for c in resp.choices]
    for choice, count in zip(resp.choices, counts):
        assert count == 6 if choice.finish_reason == "length" else count <= 6
    assert resp.usage.completion_tokens == sum(counts)


async def test_models_endpoint(client, stack):
    models = await client.models.list()
    assert [m.id for m in models.data] == [stack.model, stack.vl_model]
