"""The real stack for integration tests: Apache Kafka, Redis (state and cache), and the
services as processes, on two tiny random-weight MoE models (a DeepSeek-V3 text model and a
Qwen3-VL-MoE vision model, each with its own worker) with vLLM's CPU engine, and two
gateways (any stream can be resumed on either).

KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point the tests at existing servers instead."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI

from infra.localinfra import ROOT, local_infra
from infra.models.folder import is_built
from infra.procs import PortProcess, ServiceProcess, detail, gateway_urls, plan, start_services
from infra.supervise import Supervisor
from tests.integration.image_server import ImageServer

GATEWAY_ID = "itest"  # the gateways are itest-0 and itest-1: reply partitions 0 and 1
IMAGE_LIMIT = 1 << 20  # bytes per image, so a test can exceed it cheaply
GRACE_S = 4.0  # a short resume grace window, so that tests of its end are quick
# Set for the stack (the defaults), so that the tests' timing checks follow the stack's.
LEASE_S = 4.0  # SLUICE_LEASE_S
KAFKA_UNREACHABLE_S = 3.0  # GATEWAY_KAFKA_UNREACHABLE_S
KAFKA_OUTAGE_S = 15.0  # GATEWAY_KAFKA_OUTAGE_S


@dataclass(frozen=True)
class Stack:
    base_url: str  # the first gateway
    model: str  # the text model
    model_path: Path
    vl_model: str  # the vision model
    vl_model_path: Path
    env: dict[str, str]
    procs: dict[str, ServiceProcess]  # the supervisor keeps the current process under each name
    infra: dict[str, PortProcess]  # kafka and redis, when the tests started them
    supervisor: Supervisor
    logs: Path

    @property
    def kafka(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def urls(self) -> list[str]:
        """Every gateway's URL, the first first (a restarted gateway listens on a new port)."""
        return gateway_urls(self.procs)

    @property
    def reply_topic(self) -> str:
        return "sluice.replies"  # the first gateway's requests are on its partition 0

    def metrics_url(self, name: str) -> str:
        return metrics_url(self.procs[name])

    @property
    def worker_metrics(self) -> str:
        return self.metrics_url(f"worker-cpu.{self.model}")

    @property
    def vl_worker_metrics(self) -> str:
        return self.metrics_url(f"worker-cpu.{self.vl_model}")

    @property
    def tokenizer_metrics(self) -> str:
        return self.metrics_url("tokenizer")

    def start(self, name: str, module: str, timeout: float = 240, **env: str) -> ServiceProcess:
        """One more service process on this stack (the caller stops it); waits until ready."""
        proc = ServiceProcess(name, module, {**self.env, **env}, self.logs / f"{name}.log")
        try:
            proc.wait_ready(timeout=timeout)
        except BaseException:
            proc.stop()
            raise
        return proc

    def restart(self, name: str, **env: str) -> None:
        """Replace one of the stack's processes by one with these settings added."""
        module, extra = plan(self.env)[name]
        self.supervisor.hold(name)
        try:
            self.procs[name].stop()
            self.procs[name] = self.start(name, module, **extra, **env)
        finally:
            self.supervisor.release(name)

    def restarted(self, name: str, after: ServiceProcess, timeout: float = 240) -> ServiceProcess:
        """The process the supervisor started in place of `after` (which died), once ready."""
        return self.supervisor.wait_restarted(name, after, timeout)  # type: ignore[return-value]

    @property
    def text_worker(self) -> str:
        return f"worker-cpu.{self.model}"


def metrics_url(proc: ServiceProcess) -> str:
    return f"http://127.0.0.1:{detail(proc.ready_detail, 'metrics_port')}/metrics"


def _model_path(variable: str, module: str) -> Path:
    env = os.environ.get(variable)
    if env:
        return Path(env)
    builder = __import__(f"infra.models.{module}", fromlist=["build", "DEFAULT_OUT"])
    if not is_built(builder.DEFAULT_OUT):
        builder.build(builder.DEFAULT_OUT)
    return builder.DEFAULT_OUT


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    model_path = _model_path("SLUICE_TEST_MODEL", "tiny_dsv3")
    vl_model_path = _model_path("SLUICE_TEST_VL_MODEL", "tiny_qwen3vl")
    logs = Path(os.environ.get("SLUICE_TEST_LOGS", ROOT / ".cache" / "test-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("infra")
    models = f"{model_path.name}={model_path}@cpu;{vl_model_path.name}={vl_model_path}@cpu"
    with ExitStack() as stack_:
        endpoints = stack_.enter_context(local_infra(work, env={**os.environ, "SLUICE_MODELS": models}))
        env = {
            **os.environ, **endpoints.env(),
            "SLUICE_MODELS": models,
            "GATEWAY_PORT": "0", "GATEWAY_ID": GATEWAY_ID, "SLUICE_GATEWAYS": "2",
            "GATEWAY_RESUME_GRACE_S": str(GRACE_S), "SLUICE_LEASE_S": str(LEASE_S),
            "GATEWAY_KAFKA_UNREACHABLE_S": str(KAFKA_UNREACHABLE_S),
            "GATEWAY_KAFKA_OUTAGE_S": str(KAFKA_OUTAGE_S),
            "WORKER_METRICS_PORT": "0", "TOKENIZER_METRICS_PORT": "0", "PREPROCESS_METRICS_PORT": "0",
            "SLUICE_MAX_IMAGE_BYTES": str(IMAGE_LIMIT),
            "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }
        env.pop("SLUICE_MODEL", None)
        procs, url = start_services(stack_, env, logs, neighbours=list(endpoints.pids.values()))
        # As `make up` does: a process that dies is restarted (the fault tests rely on it).
        supervisor = Supervisor([endpoints.units, procs], log=lambda line: print(f"\n[supervisor] {line}"))
        stack_.callback(supervisor.stop)
        supervisor.start()
        yield Stack(
            base_url=url, model=model_path.name, model_path=model_path,
            vl_model=vl_model_path.name, vl_model_path=vl_model_path,
            env=env, procs=procs, infra=endpoints.units, supervisor=supervisor, logs=logs,
        )
        for name, proc in procs.items():
            assert proc.proc.poll() is None, f"{name} died during the tests; see {proc.log_path}"


@pytest.fixture(scope="session")
async def client(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0,
                           timeout=300) as c:
        yield c


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.base_url,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


@pytest.fixture(scope="module")
async def image_server() -> AsyncIterator[ImageServer]:
    """A local http server with images (and things that are not), counting its requests."""
    server = ImageServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
