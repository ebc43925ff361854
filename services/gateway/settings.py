from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from shared.env import SettingsError, env_float, env_int, env_opt, env_str
from shared.settings import KafkaSettings, ModelCatalog, RedisSettings, Topics, lease_seconds
from shared.vision import ImageLimits


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise SettingsError(f"{name} must be a positive number of seconds, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    kafka: KafkaSettings
    redis: RedisSettings
    topics: Topics
    catalog: ModelCatalog
    limits: ImageLimits
    host: str
    port: int
    gateway_id: str
    api_keys: frozenset[str]  # empty: no authentication
    max_body_bytes: int  # data: URL images count here; keep it below Kafka's message limit
    max_in_flight: int
    max_n: int
    # Longest wait for the next reply message: it covers a worker restart, when a stream
    # waits for the restarted worker to take it over.
    idle_timeout_s: float
    request_timeout_s: float  # a request's deadline is this long after it arrives (at most)
    lease_s: float  # a model with no worker heard from for this long gets 503s
    drain_s: float

    @property
    def reply_topic(self) -> str:
        return self.topics.replies(self.gateway_id)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GatewaySettings:
        keys = env_opt(env, "SLUICE_API_KEYS")
        gid = env_str(env, "GATEWAY_ID", f"{socket.gethostname()}-{os.getpid()}")
        return cls(
            kafka=KafkaSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            topics=Topics.from_env(env),
            catalog=ModelCatalog.from_env(env),
            limits=ImageLimits.from_env(env),
            host=env_str(env, "GATEWAY_HOST", "127.0.0.1"),
            port=env_int(env, "GATEWAY_PORT", 8000, minimum=0),
            gateway_id="".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in gid),
            api_keys=frozenset(k.strip() for k in keys.split(",") if k.strip()) if keys else frozenset(),
            max_body_bytes=env_int(env, "GATEWAY_MAX_BODY_BYTES", 6 << 20, minimum=1024),
            max_in_flight=env_int(env, "GATEWAY_MAX_IN_FLIGHT", 512, minimum=1),
            max_n=env_int(env, "GATEWAY_MAX_N", 8, minimum=1),
            idle_timeout_s=env_float(env, "GATEWAY_IDLE_TIMEOUT_S", 300.0),
            request_timeout_s=_positive(env_float(env, "SLUICE_REQUEST_TIMEOUT_S", 1800.0),
                                        "SLUICE_REQUEST_TIMEOUT_S"),
            lease_s=lease_seconds(env),
            drain_s=env_float(env, "SLUICE_DRAIN_S", 20.0),
        )
