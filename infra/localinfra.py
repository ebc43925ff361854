"""Start Apache Kafka (KRaft, run with `java`) and Redis on loopback.

    python -m infra.localinfra            # start them, wait until ready, serve until Ctrl-C

- Kafka: one combined broker-controller node, or with SLUICE_KAFKA_BROKERS=3 a cluster of
  three (a three-voter KRaft quorum; topics replicated three times, min.insync.replicas=2;
  the services' producers are idempotent with acks=all either way).
- Redis: two servers by role (shared.redisconn): `redis` for state (noeviction, so nothing
  correctness depends on is ever evicted; SLUICE_REDIS_STATE_MAXMEMORY, 256mb) and
  `redis-cache` for the caches (allkeys-lru, SLUICE_REDIS_CACHE_MAXMEMORY, 512mb).

If KAFKA_BOOTSTRAP_SERVERS or REDIS_URL (and REDIS_CACHE_URL) is set, that server is used
instead and not started. Topics are created with explicit partition counts either way.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from infra.procs import PortProcess

ROOT = Path(__file__).resolve().parents[1]
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    redis_url: str  # state
    redis_cache_url: str
    # The processes started here ("kafka" or "kafka-1".., "redis", "redis-cache"), if any:
    # not those named in the env.
    units: dict[str, PortProcess] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the replication factor

    @property
    def pids(self) -> dict[str, int]:
        return {name: unit.proc.pid for name, unit in self.units.items()}

    @property
    def brokers(self) -> list[str]:
        """The names of the Kafka processes started here."""
        return [name for name in self.units if name.startswith("kafka")]

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap, "REDIS_URL": self.redis_url,
                "REDIS_CACHE_URL": self.redis_cache_url, **self.extra_env}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_or_free(preferred: int) -> int:
    """The preferred port if it is free, else any free one (a local Redis may hold 6379)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def kafka_libs() -> Path:
    out = subprocess.run([str(KAFKA_DIR / "fetch-jars.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def start_kafka(workdir: Path, port: int | None = None,
                heap: str = "512m") -> tuple[str, PortProcess]:
    """A one-node KRaft Kafka on loopback, ready; returns its address and process."""
    bootstrap, units = start_kafka_cluster(workdir, 1, port, heap)
    return bootstrap, units["kafka"]


def start_kafka_cluster(workdir: Path, brokers: int, first_port: int | None = None,
                        heap: str = "512m") -> tuple[str, dict[str, PortProcess]]:
    """`brokers` combined broker-controller nodes on loopback (a KRaft quorum of them), each
    with its own storage, ready; returns the bootstrap list and the processes ("kafka", or
    "kafka-1".."kafka-N")."""
    libs = kafka_libs()
    if first_port:
        ports = [first_port, *(port_or_free(first_port + i) for i in range(1, brokers))]
    else:
        ports = [free_port() for _ in range(brokers)]
    controllers = [free_port() for _ in range(brokers)]
    replicas = min(brokers, 3)
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(controllers))
    jvm = os.environ.get("SLUICE_KAFKA_JVM_OPTS", "-XX:+UseG1GC").split()
    java = ["java", f"-Xmx{heap}", f"-Xms{heap}", *jvm,
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp", f"{libs}/*"]
    cluster_id = _cluster_id()
    units: dict[str, PortProcess] = {}
    for i, (port, controller) in enumerate(zip(ports, controllers)):
        name = "kafka" if brokers == 1 else f"kafka-{i + 1}"
        node_dir = workdir if brokers == 1 else workdir / name
        data = node_dir / "kafka-data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        quorum = ([f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}"] if brokers == 1
                  else [f"controller.quorum.voters={voters}"])
        props = node_dir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={i + 1}",
            *quorum,
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "message.max.bytes=8388608",
            "replica.fetch.max.bytes=8388608",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={2 if replicas >= 3 else 1}",
            f"offsets.topic.replication.factor={replicas}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={2 if replicas >= 3 else 1}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={2 if replicas >= 3 else 1}",
            "group.initial.rebalance.delay.ms=0",
            # A dead broker is fenced (its partitions move, the ISRs shrink) this soon: every
            # acks=all write waits for it until then.
            "broker.session.timeout.ms=6000",
            "broker.heartbeat.interval.ms=1500",
            "",
        ]))
        log = node_dir / "kafka.log"
        fmt = ["--standalone"] if brokers == 1 else []
        with open(log, "ab") as out:
            subprocess.run([*java, "kafka.tools.StorageTool", "format", *fmt, "-t", cluster_id,
                            "-c", str(props)], check=True, stdout=out, stderr=subprocess.STDOUT)
        # A restart (respawn) runs the broker again on the same storage.
        units[name] = PortProcess(name, [*java, "kafka.Kafka", str(props)], dict(os.environ), log,
                                  port)
    try:
        for unit in units.values():  # the nodes start together: a quorum needs a majority
            unit.wait_ready(90)
    except BaseException:
        for unit in units.values():
            unit.stop(timeout=20)
        raise
    return ",".join(f"127.0.0.1:{p}" for p in ports), units


def _ready(unit: PortProcess, timeout: float) -> None:
    try:
        unit.wait_ready(timeout)
    except BaseException:
        unit.stop(timeout=20)
        raise


def _cluster_id() -> str:
    """A random Kafka cluster id (URL-safe base64 of a UUID). Like Kafka's own
    Uuid.randomUuid, never one that starts with "-": the format tool would read it as an
    option (1 run in 64 failed to start Kafka)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def start_redis(workdir: Path, port: int | None = None, *, name: str = "redis",
                maxmemory: str = "256mb", policy: str = "noeviction") -> tuple[str, PortProcess]:
    """Redis on loopback, without persistence, ready; returns its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make deps installs it)")
    port = port or free_port()
    unit = PortProcess(name, [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--maxmemory", maxmemory, "--maxmemory-policy", policy,
        "--dir", str(workdir), "--daemonize", "no"], dict(os.environ), workdir / f"{name}.log", port)
    _ready(unit, timeout=20)
    return f"redis://127.0.0.1:{port}/0", unit


@contextmanager
def local_infra(workdir: Path, env: dict[str, str] | None = None, kafka_port: int | None = None,
                redis_port: int | None = None) -> Iterator[Endpoints]:
    """Kafka and Redis: the ones named in `env` if set, otherwise started here."""
    env = dict(os.environ if env is None else env)
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        units: dict[str, PortProcess] = {}  # a supervisor may replace an entry: stop the current one
        extra: dict[str, str] = {}
        kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
        if not kafka:
            brokers = int(env.get("SLUICE_KAFKA_BROKERS") or "1")
            if brokers < 1:
                raise ValueError(f"SLUICE_KAFKA_BROKERS must be at least 1, got {brokers}")
            kafka, started = start_kafka_cluster(workdir, brokers, kafka_port)
            for name, unit in started.items():
                units[name] = unit
                stack.callback(lambda name=name: units[name].stop(timeout=20))
            if brokers > 1:
                extra["SLUICE_TOPIC_REPLICATION"] = str(min(brokers, 3))
        redis = env.get("REDIS_URL")
        cache = env.get("REDIS_CACHE_URL") or (redis if redis else None)
        if not redis:
            redis, units["redis"] = start_redis(
                workdir, redis_port, maxmemory=env.get("SLUICE_REDIS_STATE_MAXMEMORY") or "256mb")
            stack.callback(lambda: units["redis"].stop(timeout=20))
        if not cache:
            cache, units["redis-cache"] = start_redis(
                workdir, None, name="redis-cache", policy="allkeys-lru",
                maxmemory=env.get("SLUICE_REDIS_CACHE_MAXMEMORY") or "512mb")
            stack.callback(lambda: units["redis-cache"].stop(timeout=20))
        endpoints = Endpoints(kafka, redis, cache, units, extra)
        create_topics(endpoints, env)
        yield endpoints


def create_topics(endpoints: Endpoints, env: dict[str, str]) -> None:
    """The shared topics (and those of the configured models, if any); services create
    whatever else they need themselves."""
    from shared.bus import ensure_topics
    from shared.env import SettingsError
    from shared.settings import KafkaSettings, ModelCatalog, Topics

    merged = {**env, **endpoints.env()}
    try:
        models = ModelCatalog.from_env(merged).models
    except SettingsError:
        models = ()
    asyncio.run(ensure_topics(KafkaSettings.from_env(merged), Topics.from_env(merged).core(models),
                              timeout=90))


def main() -> None:
    workdir = Path(os.environ.get("SLUICE_RUN_DIR", ROOT / ".cache" / "run"))
    stop = {"flag": False}

    def on_signal(*_):
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with local_infra(workdir, kafka_port=port_or_free(int(os.environ.get("SLUICE_KAFKA_PORT", "9092"))),
                     redis_port=port_or_free(int(os.environ.get("SLUICE_REDIS_PORT", "6379")))) as endpoints:
        for key, value in endpoints.env().items():
            print(f"{key}={value}", flush=True)
        print("infrastructure ready; Ctrl-C stops it", flush=True)
        while not stop["flag"]:
            signal.pause()


if __name__ == "__main__":
    main()
