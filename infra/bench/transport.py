"""Transport ceiling: what one gateway process, Kafka and SSE carry with no engine behind
them. A FAKE ENGINE (benchmark only) stands in for the worker (infra/bench/fake_engine.py).

    python -m infra.bench.transport [--quick] [--out-dir .cache/bench]

It starts a private Kafka and Redis, the real tokenizer and one gateway on benchmark-only
topics (prefix "benchfake"), the fake engine and a passive Kafka observer; then drives
the gateway with a closed loop of streaming clients (infra/bench/sse_client.py) at
several levels. Per level: streamed tokens/s and requests/s through the one gateway,
TTFT, chunk gaps, end-to-end, the latency the path adds to every token (made by the fake
engine → read by the client), the latency of each Kafka hop, and each process's CPU use.
Every figure is labelled FAKE ENGINE (benchmark only).

All of it shares the machine's cores with the gateway (Kafka, tokenizer, fake engine,
client): the ceiling is that of one gateway on this host, not of the gateway alone; the
CPU column shows which process ran out first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.bench.fake_engine import GUARD_ENV, GUARD_VALUE, LABEL
from infra.bench.process_sampler import ProcessSampler
from infra.bench.samples import window
from infra.bench.sse_client import closed_loop
from infra.bench.stats import p50_p99
from infra.bench.targets import private_env
from infra.localinfra import ROOT, local_infra
from infra.procs import ServiceProcess, detail

TOPIC_PREFIX = "benchfake"
TOKEN_INTERVAL_MS = 5.0  # about vLLM's decode step on this model and host
HOPS = {  # series → (where it is measured, what it covers)
    "request_hop_ms": "observer",  # Kafka: gateway → tokenizer
    "infer_hop_ms": "observer",  # Kafka: tokenizer → worker
    "worker_infer_hop_ms": "fake-engine",  # the same hop, as the worker's consumer saw it
    "gateway_to_worker_ms": "fake-engine",  # both hops and the tokenizer
    "reply_ack_ms": "fake-engine",  # Kafka: reply sent → stored (acks=all)
}


@dataclass(frozen=True, slots=True)
class Level:
    name: str
    concurrency: int
    max_tokens: int
    requests: int

    def offered_tokens_per_s(self, interval_ms: float) -> float:
        """What the fake engine would emit if nothing downstream held it back."""
        return self.concurrency * 1000.0 / interval_ms


# Token-heavy levels find the streamed tokens/s ceiling (c1 and c16 show the path lightly
# loaded); the short-output level finds the requests/s ceiling (per request: the
# tokenizer and three Kafka hops).
FULL: tuple[Level, ...] = (
    Level("stream c1", 1, 128, 8),
    Level("stream c16", 16, 128, 128),
    Level("stream c64", 64, 128, 512),
    Level("stream c256", 256, 128, 768),
    Level("short c64", 64, 8, 2048),
)
QUICK: tuple[Level, ...] = (
    Level("stream c64", 64, 128, 128),
    Level("short c32", 32, 8, 160),
)


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def summarize(level: Level, start: float, end: float, streams, samples: dict,
              interval_ms: float) -> dict:
    ok = [s for s in streams if s.error is None and s.first is not None]
    errors = sorted({s.error for s in streams if s.error is not None})
    elapsed = end - start
    tokens = sum(s.tokens for s in ok)
    return {
        "engine": LABEL, "level": level.name, **asdict(level),
        "completed": len(ok), "failed": len(streams) - len(ok), "errors": errors[:5],
        "duration": elapsed, "total_output_tokens": tokens,
        "offered_tokens_per_s": level.offered_tokens_per_s(interval_ms),
        "output_throughput": tokens / elapsed, "request_throughput": len(ok) / elapsed,
        "ttft_ms": p50_p99(_ms([s.first - s.start for s in ok])),
        "chunk_gap_ms": p50_p99(_ms([g for s in ok for g in s.gaps])),
        "e2el_ms": p50_p99(_ms([s.last - s.start for s in ok])),
        "added_per_token_ms": p50_p99([a for s in ok for a in s.added_ms]),
        "hops_ms": {name: p50_p99(window(samples, name, start, end)) for name in HOPS},
    }


def _load_samples(*paths: Path) -> dict:
    merged: dict = {}
    for path in paths:
        if path.exists():
            merged.update(json.loads(path.read_text())["samples"])
    return merged


def run(model: Path, out_dir: Path, levels: tuple[Level, ...], interval_ms: float,
        sampler: ProcessSampler) -> dict:
    log_dir = out_dir / "logs" / "transport"
    shutil.rmtree(log_dir, ignore_errors=True)  # this run's logs only
    fake_stats, observer_stats = out_dir / "fake-engine-samples.json", out_dir / "observer-samples.json"
    for path in (fake_stats, observer_stats):
        path.unlink(missing_ok=True)
    env = private_env()
    env.update({
        "SLUICE_MODEL": str(model), "SLUICE_TOPIC_PREFIX": TOPIC_PREFIX,
        "GATEWAY_PORT": "0", "GATEWAY_ID": "bench-transport", "TOKENIZERS_PARALLELISM": "false",
        GUARD_ENV: GUARD_VALUE, "BENCH_FAKE_TOKEN_INTERVAL_MS": f"{interval_ms:g}",
        "BENCH_FAKE_STATS": str(fake_stats), "BENCH_OBSERVER_STATS": str(observer_stats),
    })
    windows = []
    with ExitStack() as stack:
        endpoints = stack.enter_context(local_infra(log_dir / "infra", env))
        env.update(endpoints.env())
        procs: dict[str, ServiceProcess] = {}
        for name, module in (("kafka-observer", "infra.bench.kafka_observer"),
                             ("fake-engine", "infra.bench.fake_engine"),
                             ("tokenizer", "services.tokenizer"), ("gateway", "services.gateway")):
            procs[name] = ServiceProcess(name, module, env, log_dir / f"{name}.log")
            stack.callback(procs[name].stop)  # unwinds gateway first
        for proc in procs.values():
            proc.wait_ready(timeout=120)
        url = detail(procs["gateway"].ready_detail, "url")
        for name, pid in {**{n: p.proc.pid for n, p in procs.items()},
                          **endpoints.pids}.items():
            sampler.watch(name, pid)
        sampler.watch("client", os.getpid(), children=False)  # the services are its children
        print(f"transport: gateway {url}, {LABEL}, a token every {interval_ms:g} ms per stream",
              flush=True)
        for level in levels:
            with sampler.window() as win:
                start, end, streams = asyncio.run(closed_loop(
                    url, model.name, level.concurrency, level.requests, level.max_tokens,
                    warmup=min(level.concurrency, 32)))
            windows.append((level, start, end, streams, win))
            tokens = sum(s.tokens for s in streams)
            print(f"transport {level.name}: {tokens / (end - start):.0f} streamed tok/s "
                  f"[{LABEL}]", flush=True)
        sampler.forget_all()
        for name in ("fake-engine", "kafka-observer"):
            procs[name].stop()  # each writes its samples on the way out
    samples = _load_samples(fake_stats, observer_stats)
    results = [{**summarize(level, start, end, streams, samples, interval_ms), "rss": win.as_json()}
               for level, start, end, streams, win in windows]
    return {"engine": LABEL, "token_interval_ms": interval_ms, "topic_prefix": TOPIC_PREFIX,
            "hops_measured_by": HOPS, "levels": results, "summary": ceiling(results)}


def ceiling(levels: list[dict]) -> dict:
    """The most one gateway carried, and the most it carried with p99 added latency < 10 ms."""
    best = max(levels, key=lambda r: r["output_throughput"], default=None)
    best_req = max(levels, key=lambda r: r["request_throughput"], default=None)
    fast = [r for r in levels if (r["added_per_token_ms"]["p99"] or 1e9) < 10.0]
    best_fast = max(fast, key=lambda r: r["output_throughput"], default=None)
    return {
        "engine": LABEL,
        "max_tokens_per_s": best and best["output_throughput"], "at": best and best["level"],
        "max_requests_per_s": best_req and best_req["request_throughput"],
        "max_requests_at": best_req and best_req["level"],
        "max_tokens_per_s_with_p99_added_under_10ms": best_fast and best_fast["output_throughput"],
        "at_under_10ms": best_fast and best_fast["level"],
    }


def main() -> None:
    from infra.bench.report import transport_markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "sluice-tiny-dsv3",
                   help="only its tokenizer and chat template are used")
    p.add_argument("--out-dir", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--interval-ms", type=float, default=TOKEN_INTERVAL_MS)
    p.add_argument("--quick", action="store_true", help="two short levels, for development")
    args = p.parse_args()
    sampler = ProcessSampler()
    started = time.monotonic()
    result = run(args.model.resolve(), args.out_dir, QUICK if args.quick else FULL,
                 args.interval_ms, sampler)
    sampler.close()
    result["duration_s"] = time.monotonic() - started
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "transport.json").write_text(json.dumps(result, indent=1))
    print(transport_markdown(result))


if __name__ == "__main__":
    main()
