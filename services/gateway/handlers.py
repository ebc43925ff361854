"""HTTP routes: the OpenAI endpoints, models, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import msgspec
from aiohttp import web

from shared.bus import ReplyTo
from shared.contracts import StreamOpened
from shared.errors import InvalidRequest, ModelNotFound
from shared.settings import ModelSpec
from shared.streamid import new_request_id
from shared.telemetry import child_traceparent, metrics_response

from services.gateway import generate
from services.gateway.api import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_to_generate,
    completion_to_generate,
    parse,
)
from services.gateway.errors import key_owner
from services.gateway.responses import Formatter
from services.gateway.state import (ADMISSION, HEALTH, HOME, METRICS, PUBLISHER, REDIS, ROUTER,
                                    SETTINGS, STARTED)


TIMEOUT_HEADER = "X-Request-Timeout"
# `off`: SSE events without `id:` lines, for clients that take an event to be its `data:`
# line alone (vLLM's `vllm bench serve` does); such a stream can be resumed from its start.
EVENT_IDS_HEADER = "X-Sluice-Event-Ids"


def request_timeout(header: str | None, default_s: float) -> float:
    """Seconds the client gives the request (the header may only shorten the default)."""
    if header is None:
        return default_s
    try:
        value = float(header)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a positive number of seconds, got {header!r}",
                             param=TIMEOUT_HEADER)
    return min(value, default_s)


def _spec(request: web.Request, model: str) -> ModelSpec:
    spec = request.app[SETTINGS].catalog.get(model)
    if spec is None:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
    return spec


async def _generate(request: web.Request, kind: type, to_wire: Callable, chat: bool,
                    endpoint: str) -> web.StreamResponse:
    """HTTP body → API model → wire request, then run the generation."""
    app = request.app
    settings = app[SETTINGS]
    timeout = request_timeout(request.headers.get(TIMEOUT_HEADER), settings.request_timeout_s)
    req = parse(kind, await request.read())
    spec = _spec(request, req.model)
    created = time.time()
    # The id names the reply partition, so that any gateway can find the stream again.
    reply_to = ReplyTo(settings.reply_topic, random.choice(app[HOME]))
    rid = new_request_id(reply_to.partition, created)
    wire = to_wire(req, rid, created, settings.max_n, spec, settings.limits.max_images,
                   deadline=created + timeout)
    # A streamed response can be resumed within the grace window (its header travels with
    # the request, for the worker to write ahead of the stream); a whole one cannot.
    opened = None
    if req.streaming:
        opened = StreamOpened(
            request_id=rid, gateway=settings.gateway_id, endpoint="chat" if chat else "completions",
            model=req.model, created=created, n=req.choices, include_usage=req.include_usage,
            owner=key_owner(request, settings.api_keys), deadline=wire.deadline)
    wire = msgspec.structs.replace(wire, grace_s=settings.resume_grace_s if req.streaming else 0.0,
                                   opened=opened)
    return await generate.run(request, generate.Generation(
        wire=wire, spec=spec, stream=req.streaming, endpoint=endpoint,
        formatter=Formatter(chat, rid, req.model, int(created), req.choices, req.include_usage,
                            event_ids=request.headers.get(EVENT_IDS_HEADER, "on").lower() != "off"),
        traceparent=child_traceparent(request.headers.get("traceparent")),
        reply_to=reply_to,
    ))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, ChatCompletionRequest, chat_to_generate, True, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, CompletionRequest, completion_to_generate, False, "completions")


async def models(request: web.Request) -> web.Response:
    created = int(request.app[STARTED])
    return web.json_response({"object": "list", "data": [
        {"id": m.name, "object": "model", "created": created, "owned_by": "sluice",
         "max_model_len": m.max_model_len}
        for m in request.app[SETTINGS].catalog.models
    ]})


async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves and its reply stream still runs (else restart it)."""
    failure = request.app[ROUTER].failure
    if failure is not None and not request.app[ADMISSION].closing:
        return web.json_response({"status": "failed", "reason": failure.message}, status=503)
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Ready while the gateway's own dependencies work: Kafka and its reply stream. Each
    model's state is in the body; a model without a live worker gets fast 503s on its own
    requests but does not make the gateway unready. Redis is reported, not required."""
    app = request.app
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[PUBLISHER].ping(), 2)
        checks["kafka"] = "ok"
    except Exception as exc:
        checks["kafka"] = f"error: {type(exc).__name__}"
    failure = app[ROUTER].failure
    checks["replies"] = "ok" if failure is None else f"error: {failure.message}"
    if not app[HEALTH].reachable:
        checks["kafka"] = f"unreachable for {app[HEALTH].silent_s:.0f} s"
    if app[ADMISSION].closing:
        checks["gateway"] = "shutting down"
    ok = all(v == "ok" for v in checks.values())
    try:
        await asyncio.wait_for(app[REDIS].ping(), 1)
        redis = "ok"
    except Exception as exc:
        redis = f"degraded: {type(exc).__name__}"
    models = {spec.name: await app[ADMISSION].model_state(spec.route)
              for spec in app[SETTINGS].catalog.models}
    return web.json_response({"status": "ready" if ok else "not ready", "checks": checks,
                              "redis": redis, "models": models}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return metrics_response(request.app[METRICS].registry)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
