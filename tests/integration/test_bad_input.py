"""Bad input gets a 4xx with an OpenAI error body, and the services keep serving."""

import orjson
import pytest

pytestmark = pytest.mark.stack


def _chat(model, **fields):
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields})


def cases(model):
    long_prompt = "hello world " * 3000  # far over the 4096-token context
    return [
        ("malformed json", "/v1/chat/completions", b'{"model": ', 400, None),
        ("not an object", "/v1/chat/completions", b"[1,2]", 400, None),
        ("wrong type", "/v1/chat/completions", _chat(model, temperature="hot"), 400, "temperature"),
        ("messages not a list", "/v1/chat/completions",
         orjson.dumps({"model": model, "messages": "hi"}), 400, "messages"),
        ("unknown model", "/v1/chat/completions", _chat("no-such-model"), 404, "model"),
        ("empty messages", "/v1/chat/completions", orjson.dumps({"model": model, "messages": []}),
         400, "messages"),
        ("max_tokens zero", "/v1/chat/completions", _chat(model, max_tokens=0), 400, "max_tokens"),
        ("max_tokens negative", "/v1/completions",
         orjson.dumps({"model": model, "prompt": "x", "max_tokens": -1}), 400, "max_tokens"),
        ("prompt over context", "/v1/chat/completions",
         orjson.dumps({"model": model, "messages": [{"role": "user", "content": long_prompt}]}),
         400, "messages"),
        ("prompt + max_tokens over context", "/v1/completions",
         orjson.dumps({"model": model, "prompt": "hello", "max_tokens": 4096}), 400, "max_tokens"),
        ("prompt over context, streaming", "/v1/chat/completions",
         orjson.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": long_prompt}]}), 400, "messages"),
        ("body over the size limit", "/v1/chat/completions",
         _chat(model, padding="x" * (7 << 20)), 413, None),
        ("unknown route", "/v1/embeddings", _chat(model), 404, None),
    ]


@pytest.mark.parametrize("index", range(13))
async def test_bad_input_is_a_4xx_with_an_openai_error_body(http, stack, index):
    name, path, body, status, param = cases(stack.model)[index]
    async with http.post(path, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status, name
        assert resp.content_type == "application/json", name
        payload = await resp.json()
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}, name
    assert err["message"] and err["type"], name
    if param is not None:
        assert err["param"] == param, name
    if "context" in name:
        assert err["code"] == "context_length_exceeded"


def test_case_list_matches_parametrization(stack):
    assert len(cases(stack.model)) == 13


async def test_services_keep_serving_after_bad_input(client, stack):
    resp = await client.chat.completions.create(model=stack.model, max_tokens=4,
                                                messages=[{"role": "user", "content": "still there?"}])
    assert resp.usage.completion_tokens >= 1


async def test_openai_client_raises_typed_errors(client, stack):
    import openai

    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as err:
        await client.completions.create(model=stack.model, prompt="hello", max_tokens=100_000)
    assert err.value.code == "context_length_exceeded"


async def test_rejected_requests_publish_no_abort(http, client, stack):
    """A stage that answered with an error has stopped: no abort event, no Redis mark."""
    from tests.integration.helpers import metric

    before = await metric(http, f"{stack.base_url}/metrics", "sluice_gateway_aborts_published_total")
    body = orjson.dumps({"model": stack.model, "prompt": "hello", "max_tokens": 4096})
    async with http.post("/v1/completions", data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    # A full request afterwards: a wrongly spawned abort task would have finished by then.
    await client.completions.create(model=stack.model, prompt="after", max_tokens=4)
    after = await metric(http, f"{stack.base_url}/metrics", "sluice_gateway_aborts_published_total")
    assert after == before
