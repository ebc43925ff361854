"""One set of engine settings for every target: the Sluice worker's own defaults.

They are read through the worker's settings code, so `vllm serve` and the offline engine
follow whatever the worker would run with (WORKER_* variables included). The worker also
lowers its engine processes' priority and confines them to the executor's cores
(services/worker/engine.py); `tame_children` applies the same treatment to the engine
processes of any parent, so the other targets get it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.worker.placement import confine, engine_cores, keep_off


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: Path
    served_name: str
    max_model_len: int
    dtype: str
    max_num_seqs: int
    enforce_eager: bool
    kv_cache_gib: float
    nice: int
    cpus: str  # "", "executor" or a CPU list, as WORKER_ENGINE_CPUS
    extra: dict

    @classmethod
    def like_worker(cls, model: Path, env: Mapping[str, str] = os.environ) -> EngineConfig:
        from services.worker.settings import EngineSettings
        from shared.settings import ModelCatalog

        one = {k: v for k, v in env.items() if k not in ("SLUICE_MODELS", "SLUICE_MODEL_NAME")}
        spec = ModelCatalog.from_env({**one, "SLUICE_MODEL": str(model)}).models[0]
        e = EngineSettings.from_env(env, spec.pool)
        return cls(model=spec.path, served_name=spec.name, max_model_len=spec.max_model_len,
                   dtype=e.dtype, max_num_seqs=e.max_num_seqs, enforce_eager=e.enforce_eager,
                   kv_cache_gib=e.kv_cache_gib, nice=e.nice, cpus=e.cpus, extra=dict(e.extra))

    def env(self) -> dict[str, str]:
        """The CPU engine's KV cache is sized by the environment, as the worker does."""
        return {"VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
                "VLLM_CPU_KVCACHE_SPACE": f"{self.kv_cache_gib:g}"}

    def serve_flags(self) -> list[str]:
        flags = ["--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
                 "--max-num-seqs", str(self.max_num_seqs)]
        if self.enforce_eager:
            flags.append("--enforce-eager")
        for key, value in self.extra.items():  # WORKER_ENGINE_ARGS, as CLI flags
            flags += [f"--{key.replace('_', '-')}", str(value)]
        return flags

    def llm_kwargs(self) -> dict:
        return {"model": str(self.model), "dtype": self.dtype, "max_model_len": self.max_model_len,
                "max_num_seqs": self.max_num_seqs, "enforce_eager": self.enforce_eager,
                **self.extra}

    def as_json(self) -> dict:
        return {"model": str(self.model), "served_name": self.served_name,
                "max_model_len": self.max_model_len, "dtype": self.dtype,
                "max_num_seqs": self.max_num_seqs, "enforce_eager": self.enforce_eager,
                "kv_cache_gib": self.kv_cache_gib, "engine_nice": self.nice,
                "engine_cpus": self.cpus or "(not confined)", "extra": self.extra}


def tame_children(parent_pid: int, nice: int, cpus: str) -> str:
    """Renice `parent_pid`'s descendants (the engine core and its executor) and confine
    their threads, as the worker does to its own engine. Returns what was done."""
    parent = psutil.Process(parent_pid)
    children = parent.children(recursive=True)
    target = engine_cores(cpus, children)
    confine(children, target, nice)
    rest = keep_off([parent], target)  # its front end, as the worker keeps its own
    where = f"CPUs {sorted(target)}" if target else "any CPU"
    front = f"; its front end on CPUs {sorted(rest)}" if rest else ""
    return f"{len(children)} engine processes at nice {nice} on {where}{front}"


_LOGGED = ("dtype", "max_seq_len", "enforce_eager", "enable_prefix_caching",
           "enable_chunked_prefill", "device_config")


def logged_engine_config(log_dir: Path) -> dict[str, str]:
    """The engine settings vLLM itself logged at start ("Initializing a V1 LLM engine ...
    with config: ..."), from the first log under `log_dir` that has that line: evidence
    that every target really ran the same engine configuration."""
    import re

    for log in sorted(log_dir.rglob("*.log")):
        found: dict[str, str] = {}
        with open(log, errors="replace") as f:
            for line in f:
                if not found and "Initializing a V1 LLM engine" in line:
                    found = {key: m.group(1) for key in _LOGGED
                             if (m := re.search(rf"\b{key}=([^,\s]+)", line))}
                elif found and (m := re.search(r"CPU KV cache size: ([\d,]+) tokens", line)):
                    return {**found, "kv_cache_tokens": m.group(1)}
        if found:
            return found
    return {}
