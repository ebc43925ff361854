"""Typed application state: the aiohttp AppKeys the handlers use."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from shared.bus import Publisher

from services.gateway.aborts import Aborter
from services.gateway.admission import Admission
from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import ReplyRouter
from services.gateway.settings import GatewaySettings

SETTINGS = web.AppKey("settings", GatewaySettings)
METRICS = web.AppKey("metrics", GatewayMetrics)
REDIS = web.AppKey("redis", Redis)
PUBLISHER = web.AppKey("publisher", Publisher)
ROUTER = web.AppKey("router", ReplyRouter)
ADMISSION = web.AppKey("admission", Admission)
ABORTER = web.AppKey("aborter", Aborter)
STARTED = web.AppKey("started", float)
