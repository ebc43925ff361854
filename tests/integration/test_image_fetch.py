"""http(s) images, from a local server: this module runs preprocess with private addresses
allowed (and restores the default afterwards), so it can fetch from 127.0.0.1."""

from __future__ import annotations

import orjson
import pytest

from tests.integration.images import data_url, image_part

pytestmark = pytest.mark.stack

PART = "messages.0.content.0.image_url"


@pytest.fixture(scope="module")
def allow_private(stack):
    stack.restart("preprocess", PREPROCESS_ALLOW_PRIVATE="true")
    yield
    stack.restart("preprocess")


def _messages(url: str) -> list[dict]:
    return [{"role": "user", "content": [image_part(url), {"type": "text", "text": "Describe it."}]}]


async def test_http_image_equals_the_same_image_inline(client, stack, image_server, allow_private):
    fetched = await client.chat.completions.create(
        model=stack.vl_model, messages=_messages(image_server.url("/image.png")), temperature=0,
        max_tokens=12)
    inline = await client.chat.completions.create(
        model=stack.vl_model, messages=_messages(data_url(image_server.png, "image/png")),
        temperature=0, max_tokens=12)
    assert image_server.hits["image.png"] >= 1
    assert fetched.choices[0].message.content == inline.choices[0].message.content
    assert fetched.usage == inline.usage


async def test_redirect_is_followed(client, stack, image_server, allow_private):
    resp = await client.chat.completions.create(
        model=stack.vl_model, messages=_messages(image_server.url("/redirect")), max_tokens=2)
    assert resp.usage.completion_tokens == 2 and image_server.hits["redirect"] == 1


@pytest.mark.parametrize("path, words", [
    ("/loop", "redirected more than"),
    ("/page.html", "text/html"),
    ("/missing.png", "HTTP 404"),
    ("/huge.png", "larger than"),
])
async def test_bad_fetches_are_400s(http, stack, image_server, allow_private, path, words):
    body = orjson.dumps({"model": stack.vl_model, "messages": _messages(image_server.url(path)),
                         "max_tokens": 2})
    async with http.post("/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == PART and words in error["message"], error


async def test_closed_port_is_a_400(http, stack, allow_private):
    from infra.localinfra import free_port

    body = orjson.dumps({"model": stack.vl_model, "max_tokens": 2,
                         "messages": _messages(f"http://127.0.0.1:{free_port()}/x.png")})
    async with http.post("/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert "could not connect" in (await resp.json())["error"]["message"]
