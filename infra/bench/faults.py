"""Every fault of the two robustness issues on the real stack, measured from the client's side.

    python -m infra.bench.faults [--docs docs/reliability.md] [--rounds 1] [--only NAME ...]

Three stacks, one after the other, all on one model (the tiny DeepSeek-V3 by default):
- the failover stack of infra.bench.failover: a worker killed and restarted, a standby
  taking over, a handoff at SIGTERM, a rolling restart;
- one broker, two gateways: a gateway killed (its clients resume on the other), a client
  that lets go and resumes on another gateway, orphans of a dead gateway, the broker paused
  for 5 s, the whole cluster down for 20 s, Redis (state or cache) down, Redis paused for
  10 s, Redis restarted empty;
- three brokers: the leader of the busiest reply partition killed under load.

Per fault: requests sent, completed (exactly their tokens), failed (a clear error: an HTTP
error status, or an SSE error event then [DONE]), lost (neither: cut off or hung), and the
longest stall a client saw. Where a fault is expected to fail requests (the whole cluster
down), the note says how. Then the resume latency (resume request → its first event) and
how long an orphan generation ran after its gateway died.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from infra.bench import failover, machine
from infra.bench.fault_scenarios import GRACE_S, LEASE_S, Faults, Results, Stack
from infra.localinfra import ROOT, local_infra
from infra.models.folder import is_built
from infra.procs import start_services
from infra.supervise import Supervisor

SINGLE = ["gateway_kill", "client_resume", "orphans", "broker_pause", "cluster_down",
          "redis_state_down", "redis_cache_down", "redis_paused", "redis_restart"]
CLUSTER = ["broker_kill"]
FAILOVER = ["restart", "standby", "handoff", "rolling"]


def _run_stack(args, model: Path, env_extra: dict[str, str], run_dir: Path,
               scenarios: list[str], results: Results) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REDIS_CACHE_URL", "SLUICE_MODELS",
                        "WORKER_MODEL")}
    env.update({"SLUICE_MODEL": str(model), "GATEWAY_PORT": "0", "GATEWAY_ID": "faults",
                "WORKER_METRICS_PORT": "0", "TOKENIZERS_PARALLELISM": "false", **env_extra})
    with ExitStack() as stack:
        endpoints = stack.enter_context(local_infra(run_dir / "infra", env))
        env.update(endpoints.env())
        procs, url = start_services(stack, env, run_dir, neighbours=list(endpoints.pids.values()))
        supervisor = Supervisor([endpoints.units, procs], lambda line: print(line, flush=True))
        stack.callback(supervisor.stop)
        supervisor.start()
        target = Stack(endpoints.units, procs, supervisor, model.name, endpoints.kafka_bootstrap)

        async def run() -> None:
            async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=900)) as http:
                faults = Faults(target, http, args, results)
                for name in scenarios:
                    started = time.monotonic()
                    await getattr(faults, name)()
                    print(f"{name}: done in {time.monotonic() - started:.0f} s", flush=True)

        asyncio.run(run())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def render(results: Results, args: argparse.Namespace, when: str, host: dict) -> str:
    rows = [*results.failover, *results.rows]
    lines = ["| fault | requests sent | completed | failed | lost | longest stall (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    notes = []
    for row in rows:
        mark = ""
        told = [f"{n} × {what}" for what, n in row.errors.items()]
        note = "; ".join(filter(None, [row.note, *told]))
        if note:
            notes.append(note)
            mark = f" [{len(notes)}]"
        title = f"worker fault: {row.fault}" if row in results.failover else row.fault
        lines.append(f"| {title}{mark} | {row.sent} | {row.completed} | {row.failed} | "
                     f"{row.lost} | {row.longest_stall_s:.1f} |")
    lines.append("")
    lines += [f"[{i}] {note}." for i, note in enumerate(notes, 1)]
    if results.resume_s:
        r = results.resume_s
        lines += ["", f"Resume latency (a resume request → its first event), {len(r)} resumes: "
                      f"p50 {statistics.median(r) * 1000:.0f} ms, p99 {_pct(r, 0.99) * 1000:.0f} ms, "
                      f"max {max(r) * 1000:.0f} ms."]
    if results.orphan_s:
        o = results.orphan_s
        lines += ["", f"Orphans: {len(o)} generations whose gateway was killed and which nobody "
                      f"resumed stopped {min(o):.1f}–{max(o):.1f} s after the kill (grace "
                      f"{GRACE_S:g} s, plus up to the lease of {LEASE_S:g} s the gateway's last "
                      f"renewal had left, plus the worker's check every {LEASE_S / 4:g} s)."]
    lines += ["", f"Measured {when} on {host['cpu']} ({host['usable_cores']} cores, "
                  f"{host['ram_gib']:.0f} GiB) with `python -m infra.bench.faults --rounds "
                  f"{args.rounds}`."]
    return "\n".join(lines) + "\n"


MARK = "<!-- fault results -->"


def write_docs(path: Path, table: str) -> None:
    text = path.read_text()
    head, _, rest = text.partition(MARK)
    _, _, tail = rest.partition(MARK)
    path.write_text(f"{head}{MARK}\n{table}\n{MARK}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("SLUICE_MODEL"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="+", help=f"scenarios: {SINGLE + CLUSTER + FAILOVER}")
    parser.add_argument("--docs", type=Path, help="rewrite the results sections of this file")
    args = parser.parse_args()
    model = Path(args.model) if args.model else ROOT / ".cache" / "models" / "sluice-tiny-dsv3"
    if not is_built(model):
        raise SystemExit(f"no model at {model}: run `make model`")
    chosen = args.only or SINGLE + CLUSTER + FAILOVER
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = Results()
    base = ROOT / ".cache" / "bench" / "faults"
    started = time.monotonic()
    if single := [s for s in SINGLE if s in chosen]:
        _run_stack(args, model, {"SLUICE_GATEWAYS": "2"}, base / "single", single, results)
    if cluster := [s for s in CLUSTER if s in chosen]:
        _run_stack(args, model, {"SLUICE_KAFKA_BROKERS": "3"}, base / "cluster", cluster, results)
    if worker := [s for s in FAILOVER if s in chosen]:
        fargs = argparse.Namespace(model=str(model), streams=8, tokens=1500, rounds=args.rounds,
                                   scenarios=worker, docs=None)
        results.failover = failover.run(fargs, model)
    table = render(results, args, when, machine.describe())
    print(table)
    print(f"the fault suite took {(time.monotonic() - started) / 60:.1f} min")
    if args.docs is not None:
        write_docs(args.docs, table)
        if results.failover:
            failover.write_docs(args.docs, failover.render(
                results.failover, argparse.Namespace(streams=8, tokens=1500, rounds=args.rounds),
                when, machine.describe()))


if __name__ == "__main__":
    main()
