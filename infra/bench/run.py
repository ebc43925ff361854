"""`make bench`: Sluice against `vllm serve` and vLLM's offline engine, then the transport
ceiling; one run, one machine, one model, one client.

    python -m infra.bench.run [--quick] [--targets sluice vllm-serve offline transport]

The client for every HTTP target is vLLM's own `vllm bench serve` (OpenAI chat backend,
random prompts of fixed lengths, fixed seed). The HTTP targets run side by side and take
turns, load by load, round by round (the idle one paused); the offline engine and the
transport ceiling run after them, alone. Writes .cache/bench/results.json (and each
client's raw result under .cache/bench/raw/), prints the markdown tables, and on a full
run rewrites docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from datetime import datetime, timezone
from pathlib import Path

from infra.bench import machine, report, transport
from infra.bench.engine_setup import EngineConfig, logged_engine_config
from infra.bench.loads import QUICK_WARMUP, WARMUP, Load, pick
from infra.bench.process_sampler import BUSY_PCT, ProcessSampler, Window, outside_cpu
from infra.bench.serve_client import ClientProcess, client_argv
from infra.bench.targets import Running, paused, sluice, vllm_serve
from infra.localinfra import ROOT
from infra.procs import keep_off_engine_cores

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


def run_http_targets(names: list[str], engine: EngineConfig, loads: tuple[Load, ...],
                     warmup: Load, out_dir: Path, sampler: ProcessSampler,
                     rounds: int) -> dict[str, dict]:
    """Start the HTTP targets side by side, then play each load `rounds` times on each,
    alternating the order (A B, B A, ...) and pausing the target not being measured:
    this machine's speed drifts by more than the differences measured, so targets are
    compared round by round rather than minutes apart."""
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {name: {"loads": {}, "rounds": {}} for name in names}
    env = {**os.environ, **engine.env()}
    with ExitStack() as stack:
        running: dict[str, Running] = {}
        for name in names:
            started = time.monotonic()
            running[name] = stack.enter_context(
                HTTP_TARGETS[name](engine, fresh(out_dir / "logs" / name)))
            results[name]["startup_s"] = time.monotonic() - started
            results[name]["notes"] = running[name].notes
            print(f"{name}: serving at {running[name].base_url} after "
                  f"{results[name]['startup_s']:.0f} s", flush=True)
        log = stack.enter_context(open(out_dir / "logs" / "client.log", "wb"))
        client = ClientProcess(env, ROOT, log)
        stack.callback(client.close)
        # Like the services, the client (another host, in a deployment) stays off the
        # engines' cores, for every target.
        keep_off_engine_cores([pid for r in running.values() for pid in r.processes.values()],
                              [client.pid])
        for name in names:
            started = time.monotonic()
            with paused([running[o] for o in names if o != name]):
                raw = out_dir / "raw" / f"{name}-warm-up.json"
                if not client.run(client_argv(warmup, running[name].base_url, engine.model,
                                              engine.served_name, raw)):
                    raise RuntimeError(f"the warm-up failed on {name}; see {log.name}")
            print(f"{name}: warmed up ({warmup.description}) in "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        for load in loads:
            for rnd in range(rounds):
                for name in (names if rnd % 2 == 0 else names[::-1]):
                    others = [running[o] for o in names if o != name]
                    with paused(others):
                        row = _measure(running[name], load, rnd, engine, client, raw_dir, sampler)
                    results[name]["rounds"].setdefault(load.name, []).append(row)
                    print(f"{name} {load.name} round {rnd + 1}: {row['output_throughput']:.0f} "
                          f"tok/s, TTFT p50 {row['p50_ttft_ms']:.1f} ms, ITL p50 "
                          f"{row['p50_itl_ms']:.2f} ms", flush=True)
    for name in names:
        results[name]["engine_log"] = logged_engine_config(out_dir / "logs" / name)
        results[name]["loads"] = {load: summarize(rows)
                                  for load, rows in results[name]["rounds"].items()}
    return results


def _measure(target: Running, load: Load, rnd: int, engine: EngineConfig, client: ClientProcess,
             raw_dir: Path, sampler: ProcessSampler) -> dict:
    """One run of one load on one target: the client's result plus the target's processes'
    memory and CPU (anything else, a paused target included, counts as other processes)."""
    raw = raw_dir / f"{target.name}-{load.name.replace(' ', '_')}-{rnd + 1}.json"
    raw.unlink(missing_ok=True)
    sampler.forget_all()
    for service, pid in target.processes.items():
        sampler.watch(service, pid)
    sampler.watch("client", client.pid)  # its CPU use, next to the servers'
    with sampler.window() as peaks:
        ok = client.run(client_argv(load, target.base_url, engine.model, engine.served_name, raw))
    sampler.forget_all()
    if not ok or not raw.exists():
        raise RuntimeError(f"vllm bench serve failed on {target.name} {load.name}; see "
                           f"{raw_dir.parent / 'logs' / 'client.log'}")
    full = json.loads(raw.read_text())
    return {**{k: full.get(k) for k in KEEP}, "rss": _with_measured_cpu(peaks, full)}


MEDIANS = ("duration", "request_throughput", "output_throughput", "p50_ttft_ms", "p99_ttft_ms",
           "p50_itl_ms", "p99_itl_ms", "p50_e2el_ms", "p99_e2el_ms", "median_tpot_ms")


def summarize(rows: list[dict]) -> dict:
    """A target's figures for one load over its rounds: each figure's median; counts from
    the worst round; peak memory over all rounds; CPU use from the median round."""
    out: dict = {k: statistics.median(r[k] for r in rows) for k in MEDIANS
                 if all(r.get(k) is not None for r in rows)}
    out["completed"] = min(r["completed"] or 0 for r in rows)
    out["failed"] = sum(r["failed"] or 0 for r in rows)
    for k in ("total_input_tokens", "total_output_tokens"):
        values = {r.get(k) for r in rows}
        out[k] = values.pop() if len(values) == 1 else sorted(values, key=str)
    middle = sorted(rows, key=lambda r: r["output_throughput"])[len(rows) // 2]
    rss = [r["rss"] for r in rows]
    out["rss"] = {
        "trees_mib": _max_each(x.get("trees_mib", {}) for x in rss),
        "processes_mib": _max_each(x.get("processes_mib", {}) for x in rss),
        "cpu_pct": middle["rss"].get("cpu_pct", {}),
    }
    out["rounds"] = len(rows)
    return out


def _max_each(dicts) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = max(out.get(k, 0.0), v)
    return out


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
    """Sluice against vllm serve round by round (each round ran both back to back), then
    the median over rounds; against the offline engine (run apart) on the medians."""
    def get(target: str, load: str) -> dict | None:
        return targets.get(target, {}).get("loads", {}).get(load)

    out = {}
    for load in loads:
        s, o = get("sluice", load.name), get("offline", load.name)
        if s is None:
            continue
        r: dict = {}
        pairs = list(zip(targets.get("sluice", {}).get("rounds", {}).get(load.name, []),
                         targets.get("vllm-serve", {}).get("rounds", {}).get(load.name, [])))
        if pairs:
            per_round = {
                "sluice_vs_vllm_serve": [a["output_throughput"] / b["output_throughput"]
                                         for a, b in pairs],
                "ttft_p50_delta_ms": [a["p50_ttft_ms"] - b["p50_ttft_ms"] for a, b in pairs],
                "itl_p50_delta_ms": [a["p50_itl_ms"] - b["p50_itl_ms"] for a, b in pairs],
            }
            for key, values in per_round.items():
                r[key] = statistics.median(values)
            r["rounds"] = per_round
        if o:
            r["sluice_vs_offline"] = s["output_throughput"] / o["output_throughput"]
        out[load.name] = r
    return out


def against_baseline(targets: dict, loads: tuple[Load, ...]) -> dict:
    """This checkout against the baseline one, round by round (printed, and in the results)."""
    out = {}
    for load in loads:
        pairs = list(zip(targets.get("sluice", {}).get("rounds", {}).get(load.name, []),
                         targets.get("sluice-baseline", {}).get("rounds", {}).get(load.name, [])))
        if not pairs:
            continue
        tok = [a["output_throughput"] / b["output_throughput"] for a, b in pairs]
        ttft = [a["p50_ttft_ms"] - b["p50_ttft_ms"] for a, b in pairs]
        out[load.name] = {"tok_s_ratio": statistics.median(tok), "tok_s_ratio_rounds": tok,
                          "ttft_p50_delta_ms": statistics.median(ttft), "ttft_rounds": ttft}
        print(f"{load.name}: this checkout / baseline tok/s {statistics.median(tok):.3f} "
              f"({', '.join(f'{r:.3f}' for r in tok)}); TTFT p50 Δ "
              f"{statistics.median(ttft):+.1f} ms ({', '.join(f'{d:+.1f}' for d in ttft)})",
              flush=True)
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
            inputs[target] = json.dumps(r.get("total_input_tokens"))
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
    p.add_argument("--rounds", type=int, help="runs of each load on each HTTP target, "
                   "alternating targets (default 3; 1 with --quick)")
    p.add_argument("--docs", type=Path, help="markdown page to rewrite (default on a full run: "
                   "docs/benchmarks.md; never on --quick unless given)")
    p.add_argument("--baseline", type=Path, help="another checkout to run as the HTTP target "
                   "sluice-baseline beside the others (an A/B of a change); the docs are left alone")
    args = p.parse_args()
    if args.baseline:
        HTTP_TARGETS["sluice-baseline"] = lambda engine, log_dir: sluice(
            engine, log_dir, args.baseline.resolve(), "sluice-baseline")
        args.targets.insert(args.targets.index("sluice") + 1, "sluice-baseline")
    started = time.monotonic()
    loads = pick(args.loads, args.quick)
    engine = EngineConfig.like_worker(args.model)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "schema": 1, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick, "machine": machine.describe(), "engine": engine.as_json(),
        "client": CLIENT, "loads": [load.as_json() for load in loads], "targets": {},
    }
    rounds = args.rounds or (1 if args.quick else 3)
    results["rounds"] = rounds
    results["warmup"] = (QUICK_WARMUP if args.quick else WARMUP).description
    http = [t for t in args.targets if t in HTTP_TARGETS]
    sampler = ProcessSampler()
    failures = []
    for target in args.targets:
        if target in http[1:]:
            continue  # the HTTP targets run together, interleaved, at the first one's turn
        t0 = time.monotonic()
        try:
            if target in HTTP_TARGETS:
                target = " and ".join(http)
                warmup = QUICK_WARMUP if args.quick else WARMUP
                results["targets"].update(run_http_targets(http, engine, loads, warmup,
                                                           args.out_dir, sampler, rounds))
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
    if args.baseline:
        results["against_baseline"] = against_baseline(results["targets"], loads)
    results["problems"] = check(results["targets"], loads, results.get("transport")) + failures
    results["duration_s"] = time.monotonic() - started
    out = args.out_dir / "results.json"
    out.write_text(json.dumps(results, indent=1))
    print()
    print(report.markdown(results))  # ends with the run's problems, if any
    docs = args.docs or (None if args.quick or args.baseline else ROOT / "docs" / "benchmarks.md")
    if docs is not None and not failures:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(report.docs_page(results))
        print(f"\nwrote {docs}")
    print(f"results in {out}; the whole run took {results['duration_s'] / 60:.1f} min")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
