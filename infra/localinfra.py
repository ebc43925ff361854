"""Start Apache Kafka (KRaft, one combined node, run with `java`) and Redis on loopback.

    python -m infra.localinfra            # start both, wait until ready, serve until Ctrl-C

If KAFKA_BOOTSTRAP_SERVERS or REDIS_URL is set, that server is used instead and not started.
Topics are created with explicit partition counts either way.
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
    redis_url: str
    # The processes started here ("kafka", "redis"), if any: not those named in the env.
    units: dict[str, PortProcess] = field(default_factory=dict)

    @property
    def pids(self) -> dict[str, int]:
        return {name: unit.proc.pid for name, unit in self.units.items()}

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap, "REDIS_URL": self.redis_url}


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
    libs = kafka_libs()
    port = port or free_port()
    controller = free_port()
    data = workdir / "kafka-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    props = workdir / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "message.max.bytes=8388608",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ]))
    jvm = os.environ.get("SLUICE_KAFKA_JVM_OPTS", "-XX:+UseG1GC").split()
    java = ["java", f"-Xmx{heap}", f"-Xms{heap}", *jvm,
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp", f"{libs}/*"]
    cluster_id = _cluster_id()
    log = workdir / "kafka.log"
    with open(log, "ab") as out:
        subprocess.run([*java, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                        "-c", str(props)], check=True, stdout=out, stderr=subprocess.STDOUT)
    # A restart (respawn) runs the broker again on the same storage.
    unit = PortProcess("kafka", [*java, "kafka.Kafka", str(props)], dict(os.environ), log, port)
    _ready(unit, timeout=90)
    return f"127.0.0.1:{port}", unit


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


def start_redis(workdir: Path, port: int | None = None) -> tuple[str, PortProcess]:
    """Redis on loopback, without persistence, ready; returns its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make deps installs it)")
    port = port or free_port()
    unit = PortProcess("redis", [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--daemonize", "no"], dict(os.environ), workdir / "redis.log", port)
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
        kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
        if not kafka:
            kafka, units["kafka"] = start_kafka(workdir, kafka_port)
            stack.callback(lambda: units["kafka"].stop(timeout=20))
        redis = env.get("REDIS_URL")
        if not redis:
            redis, units["redis"] = start_redis(workdir, redis_port)
            stack.callback(lambda: units["redis"].stop(timeout=20))
        endpoints = Endpoints(kafka, redis, units)
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
