"""`make bench`: Sluice against `vllm serve` and vLLM's offline engine, then the transport
ceiling; one run, one machine, one model, one client.

    python -m infra.bench.run [--quick] [--targets sluice vllm-serve offline transport]

The client for every HTTP target is vLLM's own `vllm bench serve` (OpenAI chat backend,
random prompts of fixed lengths, fixed seed). The targets run one after another, never
at once. Writes .cache/bench/results.json (and each client's raw result under
.cache/bench/raw/), prints the markdown tables, and on a full run rewrites
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path

from infra.bench import machine, report, transport
from infra.bench.engine_setup import EngineConfig, logged_engine_config
from infra.bench.loads import Load, pick
from infra.bench.process_sampler import BUSY_PCT, ProcessSampler, Window, outside_cpu
from infra.bench.serve_client import client_argv, command
from infra.bench.targets import Running, sluice, vllm_serve
from infra.localinfra import ROOT

HTTP_TARGETS: dict[str, Callable[[EngineConfig, Path], AbstractContextManager[Running]]] = {
    "sluice": sluice,
    "vllm-serve": vllm_serve,
}
ALL_TARGETS = ("sluice", "vllm-serve", "offline", "transport")
KEEP = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens",
        "request_throughput", "output_throughput", "p50_ttft_ms", "p99_ttft_ms",
        "p50_itl_ms", "p99_itl_ms", "p50_e2el_ms", "p99_e2el_ms", "median_tpot_ms")
CLIENT = ("`vllm bench serve` (vLLM's load generator, run as `python -m infra.bench.serve_client`): "
          "backend openai-chat, random dataset with a fixed seed per load, fixed lengths (range ratio 0), "
          "`--ignore-eos`, temperature 0, one warm-up wave per load")


def run_http_target(name: str, engine: EngineConfig, loads: tuple[Load, ...], out_dir: Path,
                    sampler: ProcessSampler) -> dict:
    log_dir = fresh(out_dir / "logs" / name)
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict = {"loads": {}}
    with HTTP_TARGETS[name](engine, log_dir) as running:
        results["startup_s"] = time.monotonic() - started
        results["notes"] = running.notes
        for service, pid in running.processes.items():
            sampler.watch(service, pid)
        print(f"{name}: serving at {running.base_url} after {results['startup_s']:.0f} s",
              flush=True)
        for load in loads:
            raw = raw_dir / f"{name}-{load.name.replace(' ', '_')}.json"
            raw.unlink(missing_ok=True)
            argv = client_argv(load, running.base_url, engine.model, engine.served_name, raw)
            with sampler.window() as peaks, open(log_dir / "client.log", "ab") as log:
                client = subprocess.Popen(command(argv), stdout=log, stderr=subprocess.STDOUT,
                                          cwd=ROOT, env={**os.environ, **engine.env()})
                sampler.watch("client", client.pid)  # its CPU use, next to the servers'
                returncode = client.wait()
                sampler.forget("client")
            if returncode != 0 or not raw.exists():
                raise RuntimeError(f"vllm bench serve failed on {name} {load.name}; "
                                   f"see {log_dir / 'client.log'}")
            full = json.loads(raw.read_text())
            results["loads"][load.name] = {**{k: full.get(k) for k in KEEP},
                                           "rss": _with_measured_cpu(peaks, full)}
            print(f"{name} {load.name}: {full['output_throughput']:.0f} tok/s, "
                  f"TTFT p50 {full['p50_ttft_ms']:.1f} ms, ITL p50 {full['p50_itl_ms']:.2f} ms",
                  flush=True)
        sampler.forget_all()
    results["engine_log"] = logged_engine_config(log_dir)
    return results


def fresh(log_dir: Path) -> Path:
    """This run's logs only: they are read back (the engine's logged configuration)."""
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    return log_dir


def _with_measured_cpu(win: Window, full: dict) -> dict:
    """The window's figures, its CPU use cut to the measured requests: from the first
    request sent to the last token received (the client's clock is CLOCK_MONOTONIC)."""
    out = win.as_json()
    starts, ttfts, itls = full.get("start_times"), full.get("ttfts"), full.get("itls")
    if starts and ttfts and itls:
        end = max(s + t + sum(i) for s, t, i in zip(starts, ttfts, itls))
        out["cpu_pct"] = {k: round(v, 1) for k, v in win.cpu_between(min(starts), end).items()}
    return out


def run_offline(engine: EngineConfig, loads: tuple[Load, ...], out_dir: Path) -> dict:
    log_dir = fresh(out_dir / "logs" / "offline")
    loads_file, out = out_dir / "offline-loads.json", out_dir / "raw" / "offline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    loads_file.write_text(json.dumps([load.as_json() for load in loads]))
    with open(log_dir / "offline.log", "ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "infra.bench.offline", "--model", str(engine.model),
             "--loads", str(loads_file), "--out", str(out)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **engine.env()})
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"the offline engine failed; see {log_dir / 'offline.log'}")
    result = json.loads(out.read_text())
    result["engine_log"] = logged_engine_config(log_dir)
    for name, r in result["loads"].items():
        print(f"offline {name}: {r['output_throughput']:.0f} tok/s", flush=True)
    return result


def ratios(targets: dict, loads: tuple[Load, ...]) -> dict:
    def get(target: str, load: str) -> dict | None:
        return targets.get(target, {}).get("loads", {}).get(load)

    out = {}
    for load in loads:
        s, v, o = get("sluice", load.name), get("vllm-serve", load.name), get("offline", load.name)
        if s is None:
            continue
        r: dict = {}
        if v:
            r["sluice_vs_vllm_serve"] = s["output_throughput"] / v["output_throughput"]
            r["ttft_p50_delta_ms"] = s["p50_ttft_ms"] - v["p50_ttft_ms"]
            r["itl_p50_delta_ms"] = s["p50_itl_ms"] - v["p50_itl_ms"]
        if o:
            r["sluice_vs_offline"] = s["output_throughput"] / o["output_throughput"]
        out[load.name] = r
    return out


def check(targets: dict, loads: tuple[Load, ...], transport_result: dict | None) -> list[str]:
    """What makes a run's figures suspect: failed or short requests, prompts or engine
    configurations that differ between targets, other processes busy on the machine."""
    problems = []
    for load in loads:
        inputs = {}
        for target, data in targets.items():
            r = data.get("loads", {}).get(load.name)
            if r is None:
                continue
            if r.get("failed") or r.get("completed") != load.num_prompts:
                problems.append(f"{target} {load.name}: {r.get('completed')} of {load.num_prompts} "
                                f"completed, {r.get('failed')} failed")
            if r.get("total_output_tokens") != load.num_prompts * load.output_len:
                problems.append(f"{target} {load.name}: {r.get('total_output_tokens')} output tokens, "
                                f"expected {load.num_prompts * load.output_len}")
            inputs[target] = r.get("total_input_tokens")
        if len(set(inputs.values())) > 1:
            problems.append(f"{load.name}: prompt tokens differ between targets: {inputs}")
    logged = {t: json.dumps(d.get("engine_log"), sort_keys=True) for t, d in targets.items()}
    if len(set(logged.values())) > 1 or any(not d.get("engine_log") for d in targets.values()):
        problems.append("the engines' logged configurations differ or are missing: "
                        + "; ".join(f"{t}: {d.get('engine_log')}" for t, d in targets.items()))
    for (target, load_name), cpu in _cpu_windows(targets, transport_result):
        other = outside_cpu(cpu)
        if other is not None and other > BUSY_PCT:
            problems.append(f"{target} {load_name}: processes outside the benchmark used "
                            f"{other:.0f}% of a core meanwhile; its figures are disturbed")
    return problems


def _cpu_windows(targets: dict, transport_result: dict | None):
    for target, data in targets.items():
        for name, r in data.get("loads", {}).items():
            yield (target, name), (r.get("rss") or {}).get("cpu_pct")
    for r in (transport_result or {}).get("levels", []):
        yield ("transport", r["level"]), (r.get("rss") or {}).get("cpu_pct")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path(os.environ.get(
        "SLUICE_MODEL", ROOT / ".cache" / "models" / "sluice-tiny-dsv3")))
    p.add_argument("--out-dir", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--targets", nargs="+", choices=ALL_TARGETS, default=list(ALL_TARGETS))
    p.add_argument("--loads", nargs="+", help="load names (default: all)")
    p.add_argument("--quick", action="store_true", help="few prompts per load, for development")
    p.add_argument("--docs", type=Path, help="markdown page to rewrite (default on a full run: "
                   "docs/benchmarks.md; never on --quick unless given)")
    args = p.parse_args()
    started = time.monotonic()
    loads = pick(args.loads, args.quick)
    engine = EngineConfig.like_worker(args.model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "schema": 1, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick, "machine": machine.describe(), "engine": engine.as_json(),
        "client": CLIENT, "loads": [load.as_json() for load in loads], "targets": {},
    }
    sampler = ProcessSampler()
    failures = []
    for target in args.targets:
        t0 = time.monotonic()
        try:
            if target in HTTP_TARGETS:
                results["targets"][target] = run_http_target(target, engine, loads, args.out_dir,
                                                             sampler)
            elif target == "offline":
                results["targets"][target] = run_offline(engine, loads, args.out_dir)
            else:
                levels = transport.QUICK if args.quick else transport.FULL
                results["transport"] = transport.run(engine.model, args.out_dir, levels,
                                                     transport.TOKEN_INTERVAL_MS, sampler)
        except Exception as exc:  # one broken target must not hide the others' figures
            failures.append(f"{target}: {exc}")
            print(f"{target} FAILED: {exc}", flush=True)
        print(f"{target} took {time.monotonic() - t0:.0f} s", flush=True)
    sampler.close()
    results["ratios"] = ratios(results["targets"], loads)
    results["problems"] = check(results["targets"], loads, results.get("transport")) + failures
    results["duration_s"] = time.monotonic() - started
    out = args.out_dir / "results.json"
    out.write_text(json.dumps(results, indent=1))
    print()
    print(report.markdown(results))  # ends with the run's problems, if any
    docs = args.docs or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    if docs is not None and not failures:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(report.docs_page(results))
        print(f"\nwrote {docs}")
    print(f"results in {out}; the whole run took {results['duration_s'] / 60:.1f} min")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
