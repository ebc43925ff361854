"""The engine's own ceiling: vLLM's offline `LLM.generate` on the benchmark's prompts.

    python -m infra.bench.offline --model DIR --loads loads.json --out result.json

Runs in its own process (vLLM spawns its engine core, hence the __main__ guard; it logs
to stdout, hence the result file). The prompts are the ones `vllm bench serve` sends:
built by vLLM's random dataset from the same arguments and seed, then put through the
model's chat template and tokenized as the chat endpoints do (template text, no extra
special tokens).

Concurrency c is reproduced with waves: each `LLM.generate` call gets c prompts. With
fixed input and output lengths a closed loop of c clients moves in such waves too.
Latencies come from the engine's per-request timestamps (log stats on, as in the
servers): TTFT is the engine's own first-token latency; end-to-end adds the decode
time; LLM.generate reports no per-token times, so ITL here is each request's mean
inter-token time (decode time / (tokens - 1)).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prompts(load, engine, tokenizer) -> list[list[int]]:
    """The load's prompts, exactly as the HTTP client builds them, as chat token ids."""
    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from infra.bench.serve_client import client_argv

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(client_argv(load, "http://unused", engine.model, engine.served_name,
                                         Path("unused.json")))
    samples = get_samples(args, tokenizer)
    ids = []
    for sample in samples:
        text = tokenizer.apply_chat_template([{"role": "user", "content": sample.prompt}],
                                             add_generation_prompt=True, tokenize=False)
        ids.append(list(tokenizer.encode(text, add_special_tokens=False)))
    return ids


def _pct(values: list[float], p: float) -> float:
    import numpy as np

    return float(np.percentile(values, p)) if values else 0.0


def run_load(llm, load, prompts: list[list[int]]) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0, max_tokens=load.output_len, ignore_eos=True)
    wave = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    llm.generate(wave[:load.concurrency], params, use_tqdm=False)  # warm-up wave
    ttft, itl, e2e = [], [], []
    out_tokens = in_tokens = 0
    start = time.perf_counter()
    for i in range(0, len(wave), load.concurrency):
        for res in llm.generate(wave[i:i + load.concurrency], params, use_tqdm=False):
            n = len(res.outputs[0].token_ids)
            out_tokens += n
            in_tokens += len(res.prompt_token_ids)
            m = res.metrics
            if m is not None:
                decode = m.last_token_ts - m.first_token_ts
                ttft.append(m.first_token_latency)
                e2e.append(m.first_token_latency + decode)
                if n > 1:
                    itl.append(decode / (n - 1))
    elapsed = time.perf_counter() - start
    ms = 1000.0
    return {
        "completed": len(wave), "failed": 0, "duration": elapsed,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "output_throughput": out_tokens / elapsed, "request_throughput": len(wave) / elapsed,
        "p50_ttft_ms": _pct(ttft, 50) * ms, "p99_ttft_ms": _pct(ttft, 99) * ms,
        "p50_itl_ms": _pct(itl, 50) * ms, "p99_itl_ms": _pct(itl, 99) * ms,
        "p50_e2el_ms": _pct(e2e, 50) * ms, "p99_e2el_ms": _pct(e2e, 99) * ms,
        "itl_kind": "per-request mean (engine timestamps)",
        "measured": (start, start + elapsed),  # CLOCK_MONOTONIC, for the CPU figures
    }


def main() -> None:
    from infra.bench.engine_setup import EngineConfig, tame_children
    from infra.bench.loads import Load
    from infra.bench.process_sampler import ProcessSampler

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--loads", type=Path, required=True, help="JSON list of Load fields")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    engine = EngineConfig.like_worker(args.model)
    os.environ.update(engine.env())
    loads = [Load(**{k: v for k, v in item.items() if k != "description"})
             for item in json.loads(args.loads.read_text())]

    from vllm import LLM

    sampler = ProcessSampler()
    sampler.watch("offline", os.getpid())
    started = time.perf_counter()
    llm = LLM(**engine.llm_kwargs(), disable_log_stats=False)
    startup = time.perf_counter() - started
    tamed = tame_children(os.getpid(), engine.nice, engine.cpus)
    tokenizer = llm.get_tokenizer()
    results = {}
    for load in loads:
        prompts = _prompts(load, engine, tokenizer)
        with sampler.window() as win:
            result = run_load(llm, load, prompts)
        rss = win.as_json()
        rss["cpu_pct"] = {k: round(v, 1) for k, v in win.cpu_between(*result.pop("measured")).items()}
        results[load.name] = {**result, "rss": rss}
        print(f"offline {load.name}: {result['output_throughput']:.0f} tok/s", flush=True)
    sampler.close()
    args.out.write_text(json.dumps({"startup_s": startup, "notes": [tamed], "loads": results}))


if __name__ == "__main__":
    main()
