"""Typed application state: the aiohttp AppKeys the handlers use."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from shared.bus import Publisher

from services.gateway.aborts import Aborter
from services.gateway.admission import Admission
from services.gateway.follower import Follower
from services.gateway.health import KafkaHealth
from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import ReplyRouter
from services.gateway.settings import GatewaySettings
from services.gateway.watching import Watcher

SETTINGS = web.AppKey("settings", GatewaySettings)
METRICS = web.AppKey("metrics", GatewayMetrics)
REDIS = web.AppKey("redis", Redis)
PUBLISHER = web.AppKey("publisher", Publisher)
HEALTH = web.AppKey("health", KafkaHealth)
ROUTER = web.AppKey("router", ReplyRouter)
FOLLOWER = web.AppKey("follower", Follower)
REPLY_PARTITIONS = web.AppKey("reply_partitions", int)  # of the reply topic, as it is
HOME = web.AppKey("home", tuple)  # the reply partitions this gateway reads and uses
ADMISSION = web.AppKey("admission", Admission)
ABORTER = web.AppKey("aborter", Aborter)
WATCHER = web.AppKey("watcher", Watcher)
STARTED = web.AppKey("started", float)
