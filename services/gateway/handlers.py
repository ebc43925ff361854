"""HTTP routes: the OpenAI endpoints, models, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from aiohttp import web

from shared.errors import ModelNotFound
from shared.settings import ModelSpec
from shared.telemetry import child_traceparent, metrics_response

from services.gateway import generate
from services.gateway.api import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_to_generate,
    completion_to_generate,
    parse,
)
from services.gateway.responses import Formatter
from services.gateway.state import ADMISSION, METRICS, PUBLISHER, REDIS, ROUTER, SETTINGS, STARTED


def _spec(request: web.Request, model: str) -> ModelSpec:
    spec = request.app[SETTINGS].catalog.get(model)
    if spec is None:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
    return spec


async def _generate(request: web.Request, kind: type, to_wire: Callable, chat: bool,
                    endpoint: str) -> web.StreamResponse:
    """HTTP body → API model → wire request, then run the generation."""
    req = parse(kind, await request.read())
    spec = _spec(request, req.model)
    rid, created = uuid.uuid4().hex, time.time()
    settings = request.app[SETTINGS]
    wire = to_wire(req, rid, created, settings.max_n, spec, settings.limits.max_images)
    return await generate.run(request, generate.Generation(
        wire=wire, spec=spec, stream=req.streaming, endpoint=endpoint,
        formatter=Formatter(chat, rid, req.model, int(created), req.choices, req.include_usage),
        traceparent=child_traceparent(request.headers.get("traceparent")),
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
    """Ready when Kafka and Redis answer, replies flow, and every model has a live worker."""
    app = request.app
    checks: dict[str, object] = {}
    try:
        await asyncio.wait_for(app[REDIS].ping(), 2)
        checks["redis"] = "ok"
        for spec in app[SETTINGS].catalog.models:
            alive = await app[ADMISSION].workers_alive(spec.route)
            checks[f"workers.{spec.route}"] = "ok" if alive else "none alive"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        await asyncio.wait_for(app[PUBLISHER].ping(), 2)
        checks["kafka"] = "ok"
    except Exception as exc:
        checks["kafka"] = f"error: {type(exc).__name__}"
    failure = app[ROUTER].failure
    checks["replies"] = "ok" if failure is None else f"error: {failure.message}"
    if app[ADMISSION].closing:
        checks["gateway"] = "shutting down"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ok else "not ready", "checks": checks},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return metrics_response(request.app[METRICS].registry)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
