"""The one mapping from errors to HTTP: OpenAI's error body with the right status code."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.errors import AuthenticationFailed, InternalError, Overloaded, PayloadTooLarge, SluiceError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(exc: SluiceError) -> dict:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_response(exc: SluiceError) -> web.Response:
    headers = {}
    if exc.status in (429, 503):  # also when relayed from another stage
        headers["Retry-After"] = str(exc.retry_after if isinstance(exc, Overloaded) else 1)
    return web.json_response(error_body(exc), status=exc.status, headers=headers)


def _from_http(exc: web.HTTPException) -> SluiceError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"The request body is larger than the limit ({exc.text}).")
    err = SluiceError(exc.reason)
    err.status = exc.status
    err.type = "invalid_request_error" if exc.status < 500 else "internal_error"
    return err


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SluiceError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http(exc))
    except (ConnectionResetError, ConnectionError):
        raise  # the client is gone; nothing to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalError("internal server error"))


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def auth_middleware(api_keys: frozenset[str]):
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if api_keys and request.path.startswith("/v1/") and _bearer(request) not in api_keys:
            raise AuthenticationFailed("Incorrect API key provided.")
        return await handler(request)

    return check


def key_owner(request: web.Request, api_keys: frozenset[str]) -> str:
    """Who started a stream, as its header records it: the SHA-256 of the request's API key
    (never the key itself), or "" when the gateway takes no keys."""
    token = _bearer(request) if api_keys else None
    return hashlib.sha256(token.encode()).hexdigest() if token else ""
