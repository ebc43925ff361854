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
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    redis_url: str
    # The processes started here ("kafka", "redis"), if any: not those named in the env.
    pids: dict[str, int] = field(default_factory=dict)

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


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)  # a server we started is coming up; nothing to await on
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f}s; see {log}")


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kafka_libs() -> Path:
    out = subprocess.run([str(KAFKA_DIR / "fetch-jars.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@contextmanager
def run_kafka(workdir: Path, port: int | None = None,
              heap: str = "512m") -> Iterator[tuple[str, int]]:
    """A one-node KRaft Kafka on loopback; yields its address and pid."""
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
        proc = subprocess.Popen([*java, "kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_port(port, proc, "Kafka", log, timeout=90)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)


def _cluster_id() -> str:
    """A random Kafka cluster id (URL-safe base64 of a UUID). Like Kafka's own
    Uuid.randomUuid, never one that starts with "-": the format tool would read it as an
    option (1 run in 64 failed to start Kafka)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


@contextmanager
def run_redis(workdir: Path, port: int | None = None) -> Iterator[tuple[str, int]]:
    """Redis on loopback, without persistence; yields its URL and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make deps installs it)")
    port = port or free_port()
    log = workdir / "redis.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--daemonize", "no"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, "Redis", log, timeout=20)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        _stop(proc)


@contextmanager
def local_infra(workdir: Path, env: dict[str, str] | None = None, kafka_port: int | None = None,
                redis_port: int | None = None) -> Iterator[Endpoints]:
    """Kafka and Redis: the ones named in `env` if set, otherwise started here."""
    env = dict(os.environ if env is None else env)
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        pids = {}
        kafka = env.get("KAFKA_BOOTSTRAP_SERVERS")
        if not kafka:
            kafka, pids["kafka"] = stack.enter_context(run_kafka(workdir, kafka_port))
        redis = env.get("REDIS_URL")
        if not redis:
            redis, pids["redis"] = stack.enter_context(run_redis(workdir, redis_port))
        endpoints = Endpoints(kafka, redis, pids)
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
