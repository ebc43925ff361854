from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.env import SettingsError, env_bool, env_float, env_int, env_opt, env_str
from shared.settings import KafkaSettings, ModelCatalog, ModelSpec, RedisSettings, Topics, lease_seconds
from shared.vision import ImageLimits


@dataclass(frozen=True, slots=True)
class EngineSettings:
    dtype: str
    max_num_seqs: int
    enforce_eager: bool
    kv_cache_gib: float
    nice: int  # niceness of the engine's own processes (0: unchanged)
    cpus: str  # "" unchanged, "executor" (the cores vLLM bound), or a list like "0-3,8"
    # Any further vllm AsyncEngineArgs, as JSON (e.g. tensor_parallel_size on cuda/ascend).
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str], pool: str) -> EngineSettings:
        raw = env_opt(env, "WORKER_ENGINE_ARGS")
        try:
            extra = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise SettingsError(f"WORKER_ENGINE_ARGS is not JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise SettingsError("WORKER_ENGINE_ARGS must be a JSON object")
        return cls(
            dtype=env_str(env, "WORKER_DTYPE", "bfloat16"),
            max_num_seqs=env_int(env, "WORKER_MAX_NUM_SEQS", 128, minimum=1),
            enforce_eager=env_bool(env, "WORKER_ENFORCE_EAGER", True),
            kv_cache_gib=env_float(env, "WORKER_KV_CACHE_GIB", 1.0),
            nice=env_int(env, "WORKER_ENGINE_NICE", 0, minimum=0),  # see worker.placement
            cpus=_cpus(env.get("WORKER_ENGINE_CPUS", "executor" if pool == "cpu" else "").strip()),
            extra=extra,
        )


def _cpus(spec: str) -> str:
    if spec in ("", "executor") or re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", spec):
        return spec
    raise SettingsError(f"WORKER_ENGINE_CPUS must be '', 'executor' or a CPU list, got {spec!r}")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    kafka: KafkaSettings
    redis: RedisSettings
    topics: Topics
    model: ModelSpec
    engine: EngineSettings
    limits: ImageLimits
    worker_id: str
    group_id: str
    max_in_flight: int
    coalesce_ms: float
    # A worker that has not renewed its leases (and heartbeat) for this long is presumed
    # dead: its requests are taken over. It renews every quarter of it.
    lease_s: float
    session_timeout_ms: int  # Kafka group session: how soon a dead worker's partitions move
    metrics_port: int
    drain_s: int

    @property
    def pool(self) -> str:
        return self.model.pool

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerSettings:
        topics = Topics.from_env(env)
        catalog = ModelCatalog.from_env(env)
        wanted = env_opt(env, "WORKER_MODEL")
        model = catalog.get(wanted) if wanted else catalog.models[0]
        if model is None:
            raise SettingsError(f"WORKER_MODEL {wanted!r} is not in the model catalog")
        return cls(
            kafka=KafkaSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            topics=topics,
            model=model,
            engine=EngineSettings.from_env(env, model.pool),
            limits=ImageLimits.from_env(env),
            worker_id=env_str(env, "WORKER_ID", f"worker-{socket.gethostname()}-{os.getpid()}"),
            group_id=env_str(env, "WORKER_GROUP", f"{topics.prefix}-worker-{model.route}"),
            max_in_flight=env_int(env, "WORKER_MAX_IN_FLIGHT", 256, minimum=1),
            coalesce_ms=env_float(env, "WORKER_COALESCE_MS", 3.0),
            lease_s=lease_seconds(env),
            session_timeout_ms=env_int(env, "WORKER_SESSION_TIMEOUT_MS", 6000, minimum=1000),
            metrics_port=env_int(env, "WORKER_METRICS_PORT", -1, minimum=-1),
            drain_s=env_int(env, "SLUICE_DRAIN_S", 20, minimum=0),
        )
