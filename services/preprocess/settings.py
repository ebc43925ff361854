from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from shared.env import env_bool, env_float, env_int, env_str
from shared.settings import KafkaSettings, ModelCatalog, RedisSettings, Topics
from shared.vision import ImageLimits


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """Limits on fetching http(s) images."""

    timeout_s: float  # the whole fetch, redirects included
    max_redirects: int
    allow_private: bool  # fetch from private, loopback and link-local addresses (SSRF risk)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FetchSettings:
        return cls(
            timeout_s=env_float(env, "PREPROCESS_FETCH_TIMEOUT_S", 10.0),
            max_redirects=env_int(env, "PREPROCESS_MAX_REDIRECTS", 3, minimum=0),
            allow_private=env_bool(env, "PREPROCESS_ALLOW_PRIVATE", False),
        )


@dataclass(frozen=True, slots=True)
class PreprocessSettings:
    kafka: KafkaSettings
    redis: RedisSettings
    topics: Topics
    catalog: ModelCatalog
    limits: ImageLimits
    fetch: FetchSettings
    instance_id: str
    group_id: str
    max_in_flight: int
    threads: int  # decode/resize threads: Pillow releases the GIL while it works
    cache_ttl_s: int
    metrics_port: int
    drain_s: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PreprocessSettings:
        topics = Topics.from_env(env)
        return cls(
            kafka=KafkaSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            topics=topics,
            catalog=ModelCatalog.from_env(env),
            limits=ImageLimits.from_env(env),
            fetch=FetchSettings.from_env(env),
            instance_id=env_str(env, "PREPROCESS_ID", f"preprocess-{socket.gethostname()}-{os.getpid()}"),
            group_id=env_str(env, "PREPROCESS_GROUP", f"{topics.prefix}-preprocess"),
            max_in_flight=env_int(env, "PREPROCESS_MAX_IN_FLIGHT", 32, minimum=1),
            threads=env_int(env, "PREPROCESS_THREADS", os.cpu_count() or 2, minimum=1),
            cache_ttl_s=env_int(env, "PREPROCESS_CACHE_TTL_S", 3600, minimum=60),
            metrics_port=env_int(env, "PREPROCESS_METRICS_PORT", -1, minimum=-1),
            drain_s=env_int(env, "SLUICE_DRAIN_S", 20, minimum=0),
        )
