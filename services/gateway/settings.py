from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from shared.env import env_float, env_int, env_opt, env_str
from shared.settings import KafkaSettings, ModelCatalog, RedisSettings, Topics
from shared.vision import ImageLimits


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
    idle_timeout_s: float  # longest wait for the next reply message
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
            idle_timeout_s=env_float(env, "GATEWAY_IDLE_TIMEOUT_S", 120.0),
            drain_s=env_float(env, "SLUICE_DRAIN_S", 20.0),
        )
