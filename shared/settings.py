"""Settings shared by every service, built from the environment and passed in explicitly."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.env import SettingsError, env_float, env_int, env_opt, env_str
from shared.streamid import MAX_PARTITIONS
from shared.vision import VisionSpec

POOLS = ("cpu", "cuda", "ascend")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str
    linger_ms: int
    # How long the broker holds the gateway's reply fetch when no record is there; a record
    # ends the wait at once, so a long wait costs no latency. A short one makes idle fetch
    # round trips: 5 ms cost an idle stack ~16% of a core (broker and gateway) and, in
    # interleaved A/B runs against 500, 4-10% of the tokens/s at concurrency 32.
    fetch_max_wait_ms: int
    request_timeout_ms: int
    max_message_bytes: int  # the broker's message.max.bytes must allow as much
    replication_factor: int  # of the topics Sluice creates

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSettings:
        return cls(
            bootstrap_servers=env_str(env, "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            linger_ms=env_int(env, "SLUICE_KAFKA_LINGER_MS", 0, minimum=0),
            fetch_max_wait_ms=env_int(env, "SLUICE_KAFKA_FETCH_MAX_WAIT_MS", 500, minimum=0),
            request_timeout_ms=env_int(env, "SLUICE_KAFKA_REQUEST_TIMEOUT_MS", 30000, minimum=1000),
            max_message_bytes=env_int(env, "SLUICE_KAFKA_MAX_MESSAGE_BYTES", 8 << 20, minimum=1 << 20),
            replication_factor=env_int(env, "SLUICE_TOPIC_REPLICATION", 1, minimum=1),
        )


def lease_seconds(env: Mapping[str, str]) -> float:
    """SLUICE_LEASE_S: a worker silent for this long is presumed dead (workers renew their
    leases and heartbeat every quarter of it; gateways stop admitting to its model when no
    worker of it is live)."""
    value = env_float(env, "SLUICE_LEASE_S", 4.0)
    if not 0.4 <= value <= 300:
        raise SettingsError(f"SLUICE_LEASE_S must be between 0.4 and 300 seconds, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Two servers by role (shared.redisconn): `url` holds state (claims, leases, watches, the
    worker registry: never evicted), `cache_url` the caches (token ids, images: evictable).
    They may be one server, which must then not evict (`noeviction`)."""

    url: str
    cache_url: str
    timeout_s: float  # longest wait for one command: a hung Redis must not hang a request

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisSettings:
        timeout = env_float(env, "REDIS_TIMEOUT_S", 0.25)
        if not timeout > 0:
            raise SettingsError(f"REDIS_TIMEOUT_S must be positive, got {timeout}")
        url = env_str(env, "REDIS_URL", "redis://127.0.0.1:6379/0")
        return cls(url=url, cache_url=env_str(env, "REDIS_CACHE_URL", url), timeout_s=timeout)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)  # topic configs set at creation


def _kept(seconds: float, segment_s: float = 600.0) -> dict[str, str]:
    """Topic configs that keep records about `seconds` (Kafka deletes whole segments, so a
    record lives at most `seconds` plus one segment's span)."""
    return {"retention.ms": str(int(seconds * 1000)),
            "segment.ms": str(int(min(segment_s, seconds) * 1000))}


# A backlog past its requests' deadline is never run, so work topics keep records a little
# longer than a request may live.
_MARGIN_S = 600.0


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names, partition counts and retention. Every topic is created explicitly."""

    prefix: str
    request_partitions: int
    preprocess_partitions: int
    infer_partitions: int
    reply_partitions: int
    request_timeout_s: float  # longest a request lives (SLUICE_REQUEST_TIMEOUT_S)
    resume_retention_s: float  # how long a finished stream can be resumed
    deadletter_retention_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topics:
        return cls(
            prefix=env_str(env, "SLUICE_TOPIC_PREFIX", "sluice"),
            request_partitions=env_int(env, "SLUICE_REQUEST_PARTITIONS", 8, minimum=1),
            preprocess_partitions=env_int(env, "SLUICE_PREPROCESS_PARTITIONS", 8, minimum=1),
            infer_partitions=env_int(env, "SLUICE_INFER_PARTITIONS", 8, minimum=1),
            reply_partitions=env_int(env, "SLUICE_REPLY_PARTITIONS", 16, minimum=1,
                                     maximum=MAX_PARTITIONS),
            request_timeout_s=request_timeout(env),
            resume_retention_s=env_float(env, "SLUICE_RESUME_RETENTION_S", 600.0, minimum=0.0),
            deadletter_retention_s=env_float(env, "SLUICE_DEADLETTER_RETENTION_S", 7 * 86400.0,
                                             minimum=60.0),
        )

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def preprocess(self) -> str:
        """Requests with images, before the preprocess service resolves them."""
        return f"{self.prefix}.preprocess"

    def infer(self, model: ModelSpec) -> str:
        """One topic per served model: a worker only ever receives requests for its model."""
        return f"{self.prefix}.infer.{model.route}"

    @property
    def aborts(self) -> str:
        return f"{self.prefix}.aborts"

    @property
    def aborts_spec(self) -> TopicSpec:
        return TopicSpec(self.aborts, 1, _kept(3600.0))  # broadcast: every worker reads all of it

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def replies(self) -> str:
        """Every stream's replies: a fixed set of partitions, whatever the gateways."""
        return f"{self.prefix}.replies"

    @property
    def replies_spec(self) -> TopicSpec:
        # A stream is resumable while it runs (up to the request timeout) and for the
        # retention window after; the broker's append time orders it for time lookups.
        kept = _kept(self.request_timeout_s + self.resume_retention_s + _MARGIN_S)
        return TopicSpec(self.replies, self.reply_partitions,
                         {**kept, "message.timestamp.type": "LogAppendTime"})

    def core(self, models: tuple[ModelSpec, ...]) -> list[TopicSpec]:
        """Every topic of a deployment serving these models."""
        work = _kept(self.request_timeout_s + _MARGIN_S)
        return [
            TopicSpec(self.requests, self.request_partitions, work),
            TopicSpec(self.preprocess, self.preprocess_partitions, work),
            *(TopicSpec(self.infer(model), self.infer_partitions, work) for model in models),
            self.replies_spec,
            self.aborts_spec,
            TopicSpec(self.deadletter, 1, _kept(self.deadletter_retention_s, 86400.0)),
        ]


def request_timeout(env: Mapping[str, str]) -> float:
    """SLUICE_REQUEST_TIMEOUT_S: a request's deadline is this long after it arrives (at most)."""
    value = env_float(env, "SLUICE_REQUEST_TIMEOUT_S", 1800.0)
    if not value > 0:
        raise SettingsError(f"SLUICE_REQUEST_TIMEOUT_S must be a positive number of seconds, "
                            f"got {value}")
    return value


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A served model: the name clients use, its local folder and its accelerator pool.
    `vision` is set when the model takes images."""

    name: str
    path: Path
    pool: str
    max_model_len: int
    vision: VisionSpec | None = None

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise SettingsError(f"model {self.name!r}: pool must be one of {POOLS}, got {self.pool!r}")

    @property
    def route(self) -> str:
        """`<pool>.<model>` in topic-name characters: names its topic, workers and liveness."""
        return f"{self.pool}.{re.sub(r'[^A-Za-z0-9_-]', '_', self.name)}"


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read {path / 'config.json'}: {exc}") from exc


def _max_len_from_config(path: Path, cfg: dict) -> int:
    text_cfg = cfg.get("text_config", cfg)
    value = text_cfg.get("max_position_embeddings") or cfg.get("max_position_embeddings")
    if not isinstance(value, int):
        raise SettingsError(f"{path}: config.json has no max_position_embeddings; set SLUICE_MAX_MODEL_LEN")
    return value


def _spec(name: str | None, path_s: str, pool: str, max_len: int | None) -> ModelSpec:
    path = Path(path_s).expanduser().resolve()
    if not path.is_dir():
        raise SettingsError(f"model folder {path} does not exist")
    cfg = _read_config(path)
    cap = _max_len_from_config(path, cfg)
    return ModelSpec(
        name=name or path.name,
        path=path,
        pool=pool,
        max_model_len=min(max_len, cap) if max_len else cap,
        vision=VisionSpec.from_folder(path, cfg),
    )


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """Every model this deployment serves. Routing by the request's `model` field uses it."""

    models: tuple[ModelSpec, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelCatalog:
        max_len = env_int(env, "SLUICE_MAX_MODEL_LEN", 0, minimum=0) or None
        many = env_opt(env, "SLUICE_MODELS")
        if many:
            # name=path@pool;name=path@pool
            specs = []
            for item in filter(None, (p.strip() for p in many.split(";"))):
                try:
                    name, rest = item.split("=", 1)
                    path_s, pool = rest.rsplit("@", 1)
                except ValueError as exc:
                    raise SettingsError(f"SLUICE_MODELS entry {item!r} is not name=path@pool") from exc
                specs.append(_spec(name.strip(), path_s.strip(), pool.strip(), max_len))
            routes = [spec.route for spec in specs]
            if len(set(routes)) != len(routes):
                raise SettingsError(f"SLUICE_MODELS: two models share a name or route: {routes}")
            return cls(tuple(specs))
        path_s = env_opt(env, "SLUICE_MODEL")
        if not path_s:
            raise SettingsError("SLUICE_MODEL (a model folder) or SLUICE_MODELS must be set")
        pool = env_str(env, "SLUICE_POOL", "cpu")
        return cls((_spec(env_opt(env, "SLUICE_MODEL_NAME"), path_s, pool, max_len),))

    def get(self, name: str) -> ModelSpec | None:
        for spec in self.models:
            if spec.name == name:
                return spec
        return None
