"""Markdown from the benchmark's JSON: the comparison table, the ratios, the transport
ceiling, and docs/benchmarks.md. Nothing here measures; it only formats results.

    python -m infra.bench.report [.cache/bench/results.json] [--docs docs/benchmarks.md]

re-renders a saved run (e.g. after a change of layout) without measuring again.
"""

from __future__ import annotations

from infra.bench.fake_engine import LABEL as FAKE_LABEL
from infra.localinfra import ROOT
from infra.bench.process_sampler import BUSY_PCT, MACHINE, outside_cpu

TARGET_TITLES = {"sluice": "Sluice", "vllm-serve": "vllm serve", "offline": "offline LLM.generate"}
SHORT = {"services.gateway": "gateway", "services.tokenizer": "tokenizer",
         "services.worker": "worker", "vllm.entrypoints.openai.api_server": "api_server",
         "infra.bench.offline": "LLM.generate", "infra.bench.fake_engine": "fake-engine",
         "infra.bench.serve_client": "vllm bench serve"}


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _svc(name: str) -> str:
    return "worker" if name.startswith("worker-") else name  # worker-<pool>.<model>


def _per_service(values: dict | None) -> str:
    if not values:
        return "–"
    return " · ".join(f"{_svc(name)} {v:,.0f}" for name, v in values.items())


def _rss(rss: dict | None) -> str:
    """The target's own processes (the load client's memory is in the JSON only)."""
    trees = (rss or {}).get("trees_mib") or {}
    return _per_service({k: v for k, v in trees.items() if k != "client"})


def figures_table(results: dict) -> str:
    rows = ["| load | target | out tok/s | req/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 "
            "| E2E p50 | E2E p99 | peak RSS per service (MiB) |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for load in results["loads"]:
        for target, data in results["targets"].items():
            r = data.get("loads", {}).get(load["name"])
            if r is None:
                continue
            itl_mark = "\\*" if target == "offline" else ""
            rows.append(
                f"| {load['name']} | {TARGET_TITLES.get(target, target)} "
                f"| {_f(r['output_throughput'], 0)} | {_f(r['request_throughput'], 2)} "
                f"| {_f(r['p50_ttft_ms'])} | {_f(r['p99_ttft_ms'])} "
                f"| {_f(r['p50_itl_ms'], 2)}{itl_mark} | {_f(r['p99_itl_ms'], 2)}{itl_mark} "
                f"| {_f(r['p50_e2el_ms'], 0)} | {_f(r['p99_e2el_ms'], 0)} | {_rss(r.get('rss'))} |")
    return "\n".join(rows)


def _spread(r: dict, key: str, digits: int) -> str:
    """The median over rounds, then each round's value."""
    rounds = (r.get("rounds") or {}).get(key) or []
    each = f" ({', '.join(_f(v, digits) for v in rounds)})" if len(rounds) > 1 else ""
    return _f(r.get(key), digits) + each


def ratios_table(results: dict) -> str:
    rows = ["| load | Sluice / vllm serve (tok/s) | TTFT p50 Δ vs vllm serve (ms) "
            "| ITL p50 Δ vs vllm serve (ms) | Sluice / offline (tok/s) |",
            "|---|--:|--:|--:|--:|"]
    for name, r in results.get("ratios", {}).items():
        rows.append(f"| {name} | {_spread(r, 'sluice_vs_vllm_serve', 2)} "
                    f"| {_spread(r, 'ttft_p50_delta_ms', 1)} | {_spread(r, 'itl_p50_delta_ms', 2)} "
                    f"| {_f(r.get('sluice_vs_offline'), 2)} |")
    return "\n".join(rows)


def process_table(results: dict) -> str:
    """Each process's largest RSS over all loads."""
    peaks: dict[tuple[str, str], float] = {}
    for target, data in results["targets"].items():
        for r in data.get("loads", {}).values():
            for key, mib in (r.get("rss") or {}).get("processes_mib", {}).items():
                service, _, proc = key.partition("/")
                label = (target, f"{_svc(service)}: {SHORT.get(proc, proc)}")
                peaks[label] = max(peaks.get(label, 0.0), mib)
    rows = ["| target | process | peak RSS (MiB) |", "|---|---|--:|"]
    rows += [f"| {TARGET_TITLES.get(t, t)} | {p} | {mib:,.0f} |" for (t, p), mib in peaks.items()
             if mib >= 1]  # < 1 MiB: a process caught while exiting
    return "\n".join(rows)


def _pair(d: dict, digits: int = 1) -> str:
    return f"{_f(d['p50'], digits)} / {_f(d['p99'], digits)}"


CPU_ORDER = ("gateway", "tokenizer", "fake-engine", "kafka", "redis", "kafka-observer", "client")


def _cpu(cpu: dict | None) -> str:
    """Per service, then what the rest of the machine used meanwhile (not ours)."""
    if not cpu:
        return "–"
    text = _per_service({k: v for k, v in cpu.items() if k != MACHINE})
    other = outside_cpu(cpu)
    if other is not None:
        text += f" · (other processes {other:,.0f})"
    return text


def cpu_table(results: dict) -> str:
    rows = ["| load | target | CPU per process tree, % of one core, while the measured "
            "requests ran |", "|---|---|---|"]
    for load in results["loads"]:
        for target, data in results["targets"].items():
            r = data.get("loads", {}).get(load["name"])
            if r is not None:
                rows.append(f"| {load['name']} | {TARGET_TITLES.get(target, target)} "
                            f"| {_cpu((r.get('rss') or {}).get('cpu_pct'))} |")
    return "\n".join(rows)


def transport_markdown(t: dict) -> str:
    rows = [f"**{FAKE_LABEL}**: a fake token source stands in for the worker (one token per "
            f"running request every {t['token_interval_ms']:g} ms, through the worker's own "
            "consumer, coalescing and publishing code); real tokenizer, one gateway, Kafka, SSE. "
            "Latencies in ms; Kafka hops by a passive observer consumer unless noted "
            "(millisecond broker timestamps: up to 1 ms high). Added per token: from the fake "
            "engine making a token to the client reading it (reply hop, coalescing window, "
            "gateway, SSE).", "",
            "| engine | level | streams | tokens/request | offered tok/s | streamed tok/s | req/s "
            "| TTFT p50 / p99 | added per token p50 / p99 | Kafka gateway→tokenizer p50 / p99 "
            "| Kafka tokenizer→worker p50 / p99 | same, seen by the worker's consumer "
            "| reply send→broker ack p50 / p99 | CPU % of a core: " + " / ".join(CPU_ORDER)
            + " / other processes | failed |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in t["levels"]:
        h = r["hops_ms"]
        cpu = (r.get("rss") or {}).get("cpu_pct", {})
        cpus = " / ".join(_f(cpu.get(name), 0) for name in CPU_ORDER)
        cpus += f" / {_f(outside_cpu(cpu), 0)}"
        rows.append(
            f"| {r['engine']} | {r['level']} | {r['concurrency']} | {r['max_tokens']} "
            f"| {_f(r['offered_tokens_per_s'], 0)} | {_f(r['output_throughput'], 0)} "
            f"| {_f(r['request_throughput'], 1)} | {_pair(r['ttft_ms'])} "
            f"| {_pair(r['added_per_token_ms'], 2)} | {_pair(h['request_hop_ms'])} "
            f"| {_pair(h['infer_hop_ms'])} | {_pair(h['worker_infer_hop_ms'])} "
            f"| {_pair(h['reply_ack_ms'], 2)} | {cpus} | {r['failed']} |")
    s = t["summary"]
    rows += ["", f"{FAKE_LABEL}: one gateway carried at most {_f(s['max_tokens_per_s'], 0)} "
             f"streamed tok/s ({s['at']}) and {_f(s['max_requests_per_s'], 1)} req/s "
             f"({s['max_requests_at']}); with p99 added latency under 10 ms: "
             f"{_f(s['max_tokens_per_s_with_p99_added_under_10ms'], 0)} tok/s "
             f"({s['at_under_10ms'] or 'no level'})."]
    return "\n".join(rows)


def targets_check(results: dict) -> str:
    """The issue's targets, for information (another change works on meeting them)."""
    ratios = results.get("ratios", {})
    lines = []

    def check(text: str, value: float | None, ok: bool | None) -> None:
        mark = "–" if value is None else ("met" if ok else "not met")
        lines.append(f"- {text}: {_f(value, 2)} ({mark})")

    c32, c1 = ratios.get("c32", {}), ratios.get("c1", {})
    v = c32.get("sluice_vs_vllm_serve")
    check("c=32 Sluice tok/s ≥ 0.9× vllm serve", v, v is not None and v >= 0.9)
    v = c1.get("ttft_p50_delta_ms")
    check("c=1 TTFT p50 ≤ +15 ms vs vllm serve", v, v is not None and v <= 15)
    v = c1.get("itl_p50_delta_ms")
    check("c=1 ITL p50 ≤ +3 ms vs vllm serve", v, v is not None and v <= 3)
    t = results.get("transport")
    if t:
        s = t["summary"]
        v = s["max_tokens_per_s_with_p99_added_under_10ms"]
        check(f"one gateway ≥ 20,000 streamed tok/s with p99 added latency < 10 ms "
              f"[{FAKE_LABEL}]", v, v is not None and v >= 20000)
    return "\n".join(lines)


def markdown(results: dict) -> str:
    rounds = results.get("rounds", 1)
    parts = ["### Serving comparison", "", figures_table(results), "",
             f"Sluice and vllm serve: each figure is the median of {rounds} run(s) of the load "
             "(peak RSS: the largest). Latencies in ms, as `vllm bench serve` defines them (ITL: "
             "the gap between streamed chunks; Sluice's worker puts tokens that arrive within "
             "WORKER_COALESCE_MS into one chunk). \\* offline ITL: each request's mean "
             "inter-token time from the engine's timestamps (LLM.generate gives no per-token "
             "times).", "",
             "### Ratios", "", ratios_table(results), "",
             "Against vllm serve: each round ran both targets back to back, so each ratio "
             "and difference is taken within a round; the table gives the median over rounds, "
             "then each round's figure in brackets. Against the offline engine (run on its own, "
             "later): the ratio of the medians.", "",
             "### CPU use", "", cpu_table(results), ""]
    if results.get("transport"):
        parts += ["### Transport ceiling", "", transport_markdown(results["transport"]), ""]
    parts += ["### Targets (for information)", "", targets_check(results)]
    if results.get("problems"):
        parts += ["", "### Problems in this run", "",
                  *(f"- {problem}" for problem in results["problems"])]
    return "\n".join(parts)


def machine_lines(m: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return (f"- Machine: {m['cpu']}, {m['cores']} cores (of which {m['usable_cores']} usable), "
            f"{m['ram_gib']:.1f} GiB RAM, {m['os']}\n- Software: Python {m['python']}, {versions}")


def docs_page(results: dict) -> str:
    e = results["engine"]
    loads = "\n".join(f"- `{l['name']}`: {l['description']}" for l in results["loads"])
    notes = "\n".join(f"- {t}: {'; '.join(d.get('notes', []))}"
                      for t, d in results["targets"].items() if d.get("notes"))
    notes = notes.replace(f"{ROOT}/", "")  # paths relative to the checkout
    logged = "\n".join(
        f"  - {TARGET_TITLES.get(t, t)}: "
        + (", ".join(f"{k} {v}" for k, v in d["engine_log"].items()) if d.get("engine_log") else "–")
        for t, d in results["targets"].items())
    return f"""# Benchmarks

Produced by `make bench` on {results['date']}; the benchmark itself took
{results['duration_s'] / 60:.1f} minutes (installs, when needed, come before it). Regenerate
with `make bench`: it overwrites this page and `.cache/bench/results.json`. Everything below
is that run's output, unedited.

{machine_lines(results['machine'])}
- Model: `{e['served_name']}` (the tiny random-weight DeepSeek-V3-architecture MoE, `make model`)
- Engine, the Sluice worker's defaults, for every target: dtype {e['dtype']}, max_num_seqs
  {e['max_num_seqs']}, enforce_eager {e['enforce_eager']}, max_model_len {e['max_model_len']}, KV cache
  {e['kv_cache_gib']:g} GiB (`VLLM_CPU_KVCACHE_SPACE`); engine processes at nice
  {e['engine_nice']}, confined to the cores vLLM bound its executor to
  (`WORKER_ENGINE_CPUS={e['engine_cpus']}`; the target notes below name them). Every
  other process stays off those cores, for every target: Sluice's services, Kafka and
  Redis (`SLUICE_PIN_SERVICES`), vllm serve's API server, the offline engine's front end,
  and the load client.
- As each engine logged it at start:
{logged}
- Client: {results['client']}

## How it runs

One command, one machine, one model, one client. This machine's speed drifts by ±15%
over minutes, more than the differences measured, so the two HTTP targets run side by
side and take turns: for each load, {results.get('rounds', 1)} round(s), each running the load once
on each target (the order alternates: A B, B A, ...). While one target is measured, the
other's engine processes and HTTP front end are paused (SIGSTOP), so they take no CPU; the
Sluice processes that hold Kafka group sessions (tokenizer, worker front end) and the
broker and Redis stay up, idle, and what they use counts under "other processes". The
load client is one long-lived process (importing vLLM costs ~10 s of CPU per start).
Before the first load, each HTTP target serves an unmeasured warm-up
({results.get('warmup', 'none')}): a fresh stack is slow until its JIT and caches warm up.

1. **Sluice**: Kafka, Redis, the tokenizer, one worker and the gateway, started as
   `make up` starts them but serving this one model; the client talks to the gateway.
2. **vllm serve**: `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs)
   on the same folder with the same engine settings; the same treatment of its engine
   processes (nice, CPU confinement) is applied once it is healthy.
3. **offline LLM.generate** (after the two above, alone): vLLM's offline engine in its own process, on the same prompts
   (vLLM's random dataset rebuilt from the same arguments and seed, put through the chat
   template); concurrency c is played as waves of c prompts per `LLM.generate` call. It is
   the engine's ceiling on this machine: no HTTP, no streaming.
4. **Transport ceiling**: the gateway, Kafka and SSE path alone, with a
   **{FAKE_LABEL}** in place of the worker (`infra/bench/fake_engine.py`).

Loads (input and output lengths are exact: fixed lengths, `--ignore-eos`, greedy):

{loads}

Peak RSS is sampled every 0.2 s per process tree (a service with its children, e.g. the
worker with vLLM's EngineCore and Worker processes) during each load; a tree's figure is
the largest sum over its processes, which counts shared pages more than once. CPU use is
per tree while the measured requests ran; "other processes" is what the rest of the
machine used meanwhile: above {BUSY_PCT:g}% of a core, the run lists the figure under
problems.

Target notes:

{notes}

{markdown(results)}

### Peak RSS per process (largest over all loads)

{process_table(results)}
"""


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description="re-render a saved benchmark run")
    p.add_argument("results", type=Path, nargs="?", default=ROOT / ".cache" / "bench" / "results.json")
    p.add_argument("--docs", type=Path, help="also rewrite this page (e.g. docs/benchmarks.md)")
    args = p.parse_args()
    results = json.loads(args.results.read_text())
    print(markdown(results))
    if args.docs:
        args.docs.write_text(docs_page(results))


if __name__ == "__main__":
    main()
