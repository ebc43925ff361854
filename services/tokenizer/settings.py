from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from shared.env import env_int, env_str
from shared.settings import KafkaSettings, ModelCatalog, RedisSettings, Topics


@dataclass(frozen=True, slots=True)
class TokenizerSettings:
    kafka: KafkaSettings
    redis: RedisSettings
    topics: Topics
    catalog: ModelCatalog
    instance_id: str
    group_id: str
    max_in_flight: int
    threads: int
    cache_ttl_s: int
    metrics_port: int
    drain_s: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TokenizerSettings:
        topics = Topics.from_env(env)
        return cls(
            kafka=KafkaSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            topics=topics,
            catalog=ModelCatalog.from_env(env),
            instance_id=env_str(env, "TOKENIZER_ID", f"tokenizer-{socket.gethostname()}-{os.getpid()}"),
            group_id=env_str(env, "TOKENIZER_GROUP", f"{topics.prefix}-tokenizer"),
            max_in_flight=env_int(env, "TOKENIZER_MAX_IN_FLIGHT", 64, minimum=1),
            threads=env_int(env, "TOKENIZER_THREADS", 2, minimum=1),
            cache_ttl_s=env_int(env, "TOKENIZER_CACHE_TTL_S", 3600, minimum=1),
            metrics_port=env_int(env, "TOKENIZER_METRICS_PORT", -1, minimum=-1),
            drain_s=env_int(env, "SLUICE_DRAIN_S", 20, minimum=0),
        )
