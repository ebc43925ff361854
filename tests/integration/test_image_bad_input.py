"""Bad images get a 400 that names the part at fault; a private address is refused without
being fetched; nothing crashes and requests in flight carry on."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from tests.integration.conftest import IMAGE_LIMIT
from tests.integration.images import data_url, encode, image_part, picture, pixel_bomb, png_url

pytestmark = pytest.mark.stack

PART = "messages.0.content.0.image_url"


def _user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def cases(server) -> list[tuple[str, list[dict], str, str]]:
    """(name, messages, param, words the message must contain)."""
    png = encode(picture(64, 64, seed=31), "PNG")
    return [
        ("truncated png", _user(image_part(data_url(png[: len(png) // 3], "image/png"))),
         PART, "truncated"),
        ("corrupt jpeg", _user(image_part(data_url(b"\xff\xd8\xff\xe0" + os.urandom(600), "image/jpeg"))),
         PART, "image"),
        ("not an image at all", _user(image_part(data_url(b"hello, world", "image/png"))),
         PART, "not a PNG"),
        ("wrong mime type", _user(image_part(data_url(png, "text/plain"))), PART, "unsupported image type"),
        ("invalid base64", _user(image_part("data:image/png;base64,iVBOR%%w0K==")), PART, "base64"),
        ("not base64 at all", _user(image_part("data:image/png,rawbytes")), PART, "base64"),
        ("pixel bomb", _user(image_part(data_url(pixel_bomb(100_000), "image/png"))), PART, "pixels"),
        ("too many pixels", _user(image_part(data_url(pixel_bomb(8_000), "image/png"))), PART, "pixels"),
        ("over the size limit", _user(image_part(data_url(os.urandom(IMAGE_LIMIT + 4096), "image/png"))),
         PART, "larger than"),
        ("too many images", _user(*[image_part(png_url(32, 32, seed=i)) for i in range(9)]),
         "messages", "at most 8 images"),
        ("unreachable url", _user(image_part("http://unreachable.invalid/x.png")), PART, "fetch"),
        ("loopback address", _user(image_part(server.url("/image.png"))), PART, "private or local"),
        ("localhost name", _user(image_part(server.url("/image.png", host="localhost"))),
         PART, "private or local"),
        ("ipv6 loopback", _user(image_part(server.url("/image.png", host="[::1]"))),
         PART, "private or local"),
        ("cloud metadata address", _user(image_part("http://169.254.169.254/latest/meta-data/")),
         PART, "private or local"),
        ("private network", _user(image_part("http://10.1.2.3/x.png")), PART, "private or local"),
        ("file scheme", _user(image_part("file:///etc/passwd")), PART, "file:"),
        ("ftp scheme", _user(image_part("ftp://example.com/x.png")), PART, "ftp:"),
        ("image in a system message",
         [{"role": "system", "content": [image_part(png_url(32, 32))]},
          {"role": "user", "content": "hi"}], "messages.0.content.0", "user messages only"),
        ("second image bad, first fine",
         _user(image_part(png_url(32, 32, seed=32)), image_part("data:image/png;base64,@@@")),
         "messages.0.content.1.image_url", "base64"),
    ]


async def _post(http, model: str, messages: list[dict], stream: bool = False):
    body = orjson.dumps({"model": model, "messages": messages, "max_tokens": 4, "stream": stream})
    async with http.post("/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        return resp.status, resp.content_type, await resp.read()


async def _long_stream(http, model: str) -> int:
    """A streaming request that runs while the bad ones arrive; returns its token count."""
    body = orjson.dumps({"model": model, "max_tokens": 160, "ignore_eos": True, "stream": True,
                         "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": "Tell a long story."}]})
    tokens = 0
    async with http.post("/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: {"):
                chunk = orjson.loads(line[6:])
                assert "error" not in chunk
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return tokens


async def test_bad_images_are_400s_and_requests_in_flight_carry_on(http, stack, image_server):
    in_flight = [asyncio.create_task(_long_stream(http, m)) for m in (stack.vl_model, stack.model)]
    all_cases = cases(image_server)
    results = await asyncio.gather(*(_post(http, stack.vl_model, messages, stream=(i % 2 == 1))
                                     for i, (_, messages, _, _) in enumerate(all_cases)))
    for (name, _, param, words), (status, ctype, raw) in zip(all_cases, results):
        assert status == 400, (name, raw[:300])
        assert ctype == "application/json", name
        error = orjson.loads(raw)["error"]
        assert error["type"] == "invalid_request_error", name
        assert error["param"] == param, (name, error)
        assert words.lower() in error["message"].lower(), (name, error["message"])
    assert await asyncio.gather(*in_flight) == [160, 160]
    assert sum(image_server.hits.values()) == 0, "a private address was fetched"


async def test_image_to_a_text_model_is_a_clear_400(http, stack):
    status, _, raw = await _post(http, stack.model, _user(image_part(png_url(32, 32))))
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["param"] == "messages.0.content.0"
    assert error["message"] == f"The model `{stack.model}` does not accept image input."


async def test_services_still_serve_images_afterwards(client, stack):
    resp = await client.chat.completions.create(
        model=stack.vl_model, max_tokens=3,
        messages=_user(image_part(png_url(48, 32, seed=33)), {"type": "text", "text": "ok?"}))
    assert resp.usage.completion_tokens == 3
