"""The real stack for integration tests: Apache Kafka, Redis, and the three services as
processes, on the tiny random-weight MoE model with vLLM's CPU engine.

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

from infra.localinfra import ROOT, free_port, local_infra
from infra.procs import start_services

GATEWAY_ID = "itest"


@dataclass(frozen=True)
class Stack:
    base_url: str
    model: str
    model_path: Path
    env: dict[str, str]
    worker_metrics: str
    tokenizer_metrics: str
    logs: Path

    @property
    def kafka(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def reply_topic(self) -> str:
        return f"sluice.replies.{GATEWAY_ID}"


def _model_path() -> Path:
    env = os.environ.get("SLUICE_TEST_MODEL")
    if env:
        return Path(env)
    from infra.models.tiny_dsv3 import DEFAULT_OUT, MARKER, build

    if not (DEFAULT_OUT / MARKER).exists():
        DEFAULT_OUT.parent.mkdir(parents=True, exist_ok=True)
        build(DEFAULT_OUT)
    return DEFAULT_OUT


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    model_path = _model_path()
    logs = Path(os.environ.get("SLUICE_TEST_LOGS", ROOT / ".cache" / "test-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("infra")
    with ExitStack() as stack_:
        endpoints = stack_.enter_context(local_infra(work))
        worker_port, tok_port = free_port(), free_port()
        env = {
            **os.environ, **endpoints.env(),
            "SLUICE_MODEL": str(model_path),
            "GATEWAY_PORT": "0", "GATEWAY_ID": GATEWAY_ID,
            "WORKER_METRICS_PORT": str(worker_port), "TOKENIZER_METRICS_PORT": str(tok_port),
            "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }
        procs, url = start_services(stack_, env, logs)
        yield Stack(
            base_url=url, model=model_path.name, model_path=model_path, env=env,
            worker_metrics=f"http://127.0.0.1:{worker_port}/metrics",
            tokenizer_metrics=f"http://127.0.0.1:{tok_port}/metrics", logs=logs,
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
