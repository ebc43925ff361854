"""The one error → HTTP mapping, and authentication, on a bare aiohttp app."""

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared.errors import ContextLengthExceeded, Overloaded, Unavailable

from services.gateway.errors import auth_middleware, error_middleware


async def _client(raise_exc, keys=frozenset()):
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if raise_exc is not None:
            raise raise_exc
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1024, middlewares=[error_middleware, auth_middleware(keys)])
    app.router.add_post("/v1/x", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_sluice_errors_become_openai_bodies_with_status():
    client = await _client(ContextLengthExceeded("too long", param="messages"))
    try:
        resp = await client.post("/v1/x", data=b"{}")
        assert resp.status == 400
        assert await resp.json() == {"error": {"message": "too long", "type": "invalid_request_error",
                                               "param": "messages", "code": "context_length_exceeded"}}
    finally:
        await client.close()


async def test_admission_errors_carry_retry_after():
    for exc, status in ((Overloaded("busy", retry_after=3), 429), (Unavailable("down", retry_after=7), 503)):
        client = await _client(exc)
        try:
            resp = await client.post("/v1/x", data=b"{}")
            assert resp.status == status
            assert resp.headers["Retry-After"] == str(exc.retry_after)
        finally:
            await client.close()


async def test_unexpected_exceptions_are_500_without_internals():
    client = await _client(RuntimeError("secret detail"))
    try:
        resp = await client.post("/v1/x", data=b"{}")
        body = await resp.json()
        assert resp.status == 500 and "secret" not in body["error"]["message"]
    finally:
        await client.close()


async def test_body_over_the_limit_is_413_and_unknown_route_404():
    client = await _client(None)
    try:
        resp = await client.post("/v1/x", data=b"x" * 4096)
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "request_too_large"
        resp = await client.get("/nope")
        assert resp.status == 404 and "error" in await resp.json()
    finally:
        await client.close()


async def test_api_keys_are_required_when_configured():
    client = await _client(None, keys=frozenset({"k1"}))
    try:
        assert (await client.post("/v1/x", data=b"{}")).status == 401
        bad = await client.post("/v1/x", data=b"{}", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401 and (await bad.json())["error"]["type"] == "authentication_error"
        ok = await client.post("/v1/x", data=b"{}", headers={"Authorization": "Bearer k1"})
        assert ok.status == 200
    finally:
        await client.close()
