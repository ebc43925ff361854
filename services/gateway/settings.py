from __future__ import annotations

import os
import re
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from shared.env import SettingsError, env_float, env_int, env_opt, env_str
from shared.settings import (KafkaSettings, ModelCatalog, RedisSettings, Topics, lease_seconds,
                             request_timeout)
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
    # The reply partitions this gateway puts its requests' replies on and reads (GATEWAY_REPLY_PARTITIONS,
    # else from the id: see home_partitions).
    home_partitions: tuple[int, ...]
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
    # A streamed request whose client disconnects keeps generating this long, for the client
    # to resume it on any gateway; 0: stop it at once.
    resume_grace_s: float
    publish_timeout_s: float  # longest wait for Kafka to store a new request (then 503)
    kafka_unreachable_s: float  # Kafka silent this long: new requests get 503 at once
    kafka_outage_s: float  # Kafka silent this long: open streams end with an error event

    @property
    def reply_topic(self) -> str:
        return self.topics.replies

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GatewaySettings:
        keys = env_opt(env, "SLUICE_API_KEYS")
        raw_id = env_str(env, "GATEWAY_ID", f"{socket.gethostname()}-{os.getpid()}")
        gid = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw_id)
        topics = Topics.from_env(env)
        unreachable = env_float(env, "GATEWAY_KAFKA_UNREACHABLE_S", 3.0, minimum=0.5)
        return cls(
            kafka=KafkaSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            topics=topics,
            catalog=ModelCatalog.from_env(env),
            limits=ImageLimits.from_env(env),
            host=env_str(env, "GATEWAY_HOST", "127.0.0.1"),
            port=env_int(env, "GATEWAY_PORT", 8000, minimum=0),
            gateway_id=gid,
            home_partitions=home_partitions(gid, topics.reply_partitions,
                                            env_opt(env, "GATEWAY_REPLY_PARTITIONS")),
            api_keys=frozenset(k.strip() for k in keys.split(",") if k.strip()) if keys else frozenset(),
            max_body_bytes=env_int(env, "GATEWAY_MAX_BODY_BYTES", 6 << 20, minimum=1024),
            max_in_flight=env_int(env, "GATEWAY_MAX_IN_FLIGHT", 512, minimum=1),
            max_n=env_int(env, "GATEWAY_MAX_N", 8, minimum=1),
            idle_timeout_s=env_float(env, "GATEWAY_IDLE_TIMEOUT_S", 300.0, minimum=1.0),
            request_timeout_s=request_timeout(env),
            lease_s=lease_seconds(env),
            drain_s=env_float(env, "SLUICE_DRAIN_S", 20.0, minimum=0.0),
            resume_grace_s=env_float(env, "GATEWAY_RESUME_GRACE_S", 15.0, minimum=0.0,
                                     maximum=3600.0),
            publish_timeout_s=env_float(env, "GATEWAY_PUBLISH_TIMEOUT_S", 8.0, minimum=0.1),
            kafka_unreachable_s=unreachable,
            kafka_outage_s=env_float(env, "GATEWAY_KAFKA_OUTAGE_S", 15.0, minimum=unreachable),
        )


def home_partitions(gateway_id: str, partitions: int, explicit: str | None) -> tuple[int, ...]:
    """The reply partitions a gateway uses: GATEWAY_REPLY_PARTITIONS if set; else, for an id
    that ends in an ordinal (a StatefulSet pod `sluice-gateway-3`, `make up`'s `gw-0`…), the
    ordinal modulo the partition count, so that replicas 0..N-1 never share one; else a hash
    of the id. Gateways that share a partition both read it and skip each other's records."""
    if explicit:
        try:
            chosen = tuple(sorted({int(p) for p in explicit.split(",") if p.strip()}))
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_REPLY_PARTITIONS must list partition numbers, "
                                f"got {explicit!r}") from exc
        if not chosen or not all(0 <= p < partitions for p in chosen):
            raise SettingsError(f"GATEWAY_REPLY_PARTITIONS must name partitions of 0..{partitions - 1}, "
                                f"got {explicit!r}")
        return chosen
    ordinal = re.search(r"(\d+)$", gateway_id)
    if ordinal:
        return (int(ordinal.group(1)) % partitions,)
    return (zlib.crc32(gateway_id.encode()) % partitions,)
