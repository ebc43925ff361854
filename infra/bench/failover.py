"""Failover, measured from the client's side on the real stack (Kafka, Redis, the services,
vLLM's CPU engine on one model), with the launcher's supervisor restarting what exits.

    python -m infra.bench.failover [--streams 8] [--tokens 1500] [--rounds 3] [--docs docs/reliability.md]

Scenarios (greedy streams of distinct lengths, EOS ignored):
- restart: SIGKILL the only worker mid-stream; the supervisor restarts it and the new
  process takes every stream over from the reply log.
- standby: two workers; SIGKILL one mid-stream; the other takes its streams over.
- handoff: two workers; SIGTERM one that has no drain time (SLUICE_DRAIN_S=0); it sends
  what it generated and releases its claims; the other continues.
- rolling restart: two workers under a steady closed loop of concurrent streams; each is
  stopped with SIGTERM (default drain) in turn and restarted by the supervisor.

Per takeover: the time from the fault to the stream's first continued token (the first
chunk after the stall), and the work done again: the prefix prefilled again (the prompt
plus the tokens generated so far) and an estimate of decode tokens generated twice (what
the dead worker generated after its last stored reply: per-stream decode rate times the
time from that reply to the kill; nothing after a handoff, which sends everything first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from infra.bench import machine
from infra.bench.streams import Stream, complete, start_streams
from infra.localinfra import ROOT, local_infra
from infra.models.folder import is_built
from infra.procs import ServiceProcess, start_services
from infra.supervise import Supervisor

STALL_S = 0.5  # a gap between chunks this long after a fault is the failover's stall


@dataclass
class Takeover:
    resume_s: float  # fault → first continued token
    prefix: int  # tokens generated before the fault (prefilled again with the prompt)
    twice: float  # estimated decode tokens generated twice


@dataclass
class Scenario:
    name: str
    fault: str
    sent: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    longest_stall_s: float = 0.0
    takeovers: list[Takeover] = field(default_factory=list)
    note: str = ""
    errors: dict[str, int] = field(default_factory=dict)  # what the failed ones were told

    def count(self, streams: list[Stream]) -> None:
        """Completed: exactly its tokens; failed: a clear error (an error status, or an
        error event then [DONE]); lost: neither (cut off, or hung)."""
        for s in streams:
            self.sent += 1
            if s.complete():
                self.completed += 1
            elif s.errors or s.status != 200:
                self.failed += 1
                error = (s.errors[0].get("error") or {}) if s.errors else {}
                what = f"{s.status} {error.get('code')}: {str(error.get('message'))[:80]}"
                self.errors[what] = self.errors.get(what, 0) + 1
            else:
                self.lost += 1
            self.longest_stall_s = max(self.longest_stall_s, s.longest_gap())


def takeover_of(stream: Stream, fault_at: float) -> Takeover | None:
    """The stall that began at the fault, if the stream had one: when it ended, and what
    the stream had before it."""
    before = [t for t in stream.arrivals if t <= fault_at]
    after = [t for t in stream.arrivals if t > fault_at]
    if not before or not after:
        return None
    # Chunks already on their way at the fault arrive within ms; the first one after a
    # stall is the first continued token.
    prev = before[-1]
    for t in after:
        if t - prev >= STALL_S:
            break
        prev = t
    else:
        return None  # never stalled: it was not on the worker that died
    index = stream.arrivals.index(t)
    tokens_before = _tokens_until(stream, index)
    rate = tokens_before / max(before[-1] - stream.arrivals[0], 1e-3)
    return Takeover(resume_s=t - fault_at, prefix=tokens_before,
                    twice=rate * max(fault_at - before[-1], 0.0))


def _tokens_until(stream: Stream, chunk_index: int) -> int:
    return sum(stream.chunk_tokens[:chunk_index])


class Bench:
    def __init__(self, url: str, model: str, procs: dict[str, ServiceProcess], extra: dict,
                 supervisor: Supervisor, args: argparse.Namespace) -> None:
        self.url, self.model, self.procs, self.extra = url, model, procs, extra
        self.supervisor, self.args = supervisor, args

    @property
    def worker(self) -> str:
        return next(name for name in self.procs if name.startswith("worker-"))

    def lengths(self) -> list[int]:
        return [self.args.tokens + 11 * i for i in range(self.args.streams)]

    async def faulted(self, http, scenario: Scenario, fault) -> None:
        """One round: streams under way, then `fault()` (returns when the fault is done)."""
        tasks, progress = start_streams(http, self.model, self.lengths(), scenario.name)
        await progress.all_have(16)
        fault_at = time.monotonic()
        await fault()
        streams = list(await asyncio.wait_for(asyncio.gather(*tasks), 600))
        scenario.count(streams)
        scenario.takeovers += [t for s in streams if (t := takeover_of(s, fault_at)) is not None]

    async def restart(self, http) -> Scenario:
        sc = Scenario("restart", "SIGKILL of the only worker; the supervisor restarts it")
        for _ in range(self.args.rounds):
            victim = self.procs[self.worker]

            async def kill() -> None:
                os.kill(victim.proc.pid, signal.SIGKILL)

            await self.faulted(http, sc, kill)
            await asyncio.to_thread(self.supervisor.wait_restarted, self.worker, victim, 600)
        return sc

    async def standby(self, http) -> Scenario:
        sc = Scenario("standby", "SIGKILL of one of two workers; the other takes over")
        for i in range(self.args.rounds):
            table, name = (self.procs, self.worker) if i % 2 == 0 else (self.extra, "worker-2")
            victim = table[name]

            async def kill() -> None:
                os.kill(victim.proc.pid, signal.SIGKILL)

            await self.faulted(http, sc, kill)
            await asyncio.to_thread(self.supervisor.wait_restarted, name, victim, 600)
        return sc

    async def handoff(self, http) -> Scenario:
        sc = Scenario("handoff", "SIGTERM of a worker with SLUICE_DRAIN_S=0; the other continues")
        for _ in range(self.args.rounds):
            victim = self.extra["worker-2"]

            async def stop() -> None:
                victim.signal(signal.SIGTERM)

            await self.faulted(http, sc, stop)
            await asyncio.to_thread(self.supervisor.wait_restarted, "worker-2", victim, 600)
        return sc

    async def rolling(self, http) -> Scenario:
        sc = Scenario("rolling restart", f"SIGTERM of each worker in turn (default drain) under "
                                         f"{self.args.streams} steady streams")
        done = asyncio.Event()
        streams: list[Stream] = []

        async def loop(slot: int) -> None:
            n = 0
            while not done.is_set():
                s = Stream(300 + 7 * slot)
                streams.append(s)
                await complete(http, self.model, f"rolling {slot}.{n}: once", s)
                n += 1

        loaders = [asyncio.create_task(loop(i)) for i in range(self.args.streams)]
        await asyncio.sleep(5)
        for table, name in ((self.procs, self.worker), (self.extra, "worker-2")):
            victim = table[name]
            victim.signal(signal.SIGTERM)
            await asyncio.to_thread(self.supervisor.wait_restarted, name, victim, 600)
            await asyncio.sleep(5)
        done.set()
        await asyncio.wait_for(asyncio.gather(*loaders), 600)
        sc.count(streams)
        return sc


async def measure(bench: Bench, scenarios: list[str]) -> list[Scenario]:
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(bench.url, timeout=timeout) as http:
        out = []
        for name in scenarios:
            started = time.monotonic()
            sc = await getattr(bench, name)(http)
            print(f"{sc.name}: {sc.completed}/{sc.sent} completed, {len(sc.takeovers)} takeovers "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            out.append(sc)
        return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def render(results: list[Scenario], args: argparse.Namespace, when: str, host: dict) -> str:
    lines = [
        "| scenario | fault | requests sent | completed | failed | lost | longest stall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sc in results:
        lines.append(f"| {sc.name} | {sc.fault} | {sc.sent} | {sc.completed} | {sc.failed} | "
                     f"{sc.lost} | {sc.longest_stall_s:.1f} |")
    lines += ["", "| scenario | takeovers | fault → first continued token p50 (s) | max (s) | "
                  "prefix prefilled again, mean (tokens) | decode tokens generated twice, estimate "
                  "(mean per takeover) |", "| --- | --- | --- | --- | --- | --- |"]
    for sc in results:
        if not sc.takeovers:
            continue
        resume = [t.resume_s for t in sc.takeovers]
        lines.append(f"| {sc.name} | {len(sc.takeovers)} | {statistics.median(resume):.2f} | "
                     f"{max(resume):.2f} | {statistics.mean(t.prefix for t in sc.takeovers):.0f} | "
                     f"{statistics.mean(t.twice for t in sc.takeovers):.2f} |")
    return "\n".join(lines) + (
        f"\n\nMeasured {when} on {host['cpu']} ({host['usable_cores']} cores, "
        f"{host['ram_gib']:.0f} GiB) with `python -m infra.bench.failover --streams "
        f"{args.streams} --tokens {args.tokens} --rounds {args.rounds}`.\n")


def run(args: argparse.Namespace, model: Path) -> list[Scenario]:
    """The chosen scenarios (args.scenarios) on a stack of their own."""
    run_dir = ROOT / ".cache" / "bench" / "failover"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REDIS_CACHE_URL", "SLUICE_MODELS",
                        "WORKER_MODEL")}
    env.update({"SLUICE_MODEL": str(model), "GATEWAY_PORT": "0", "GATEWAY_ID": "failover",
                "WORKER_METRICS_PORT": "0", "TOKENIZERS_PARALLELISM": "false"})
    results: list[Scenario] = []
    with ExitStack() as stack:
        endpoints = stack.enter_context(local_infra(run_dir / "infra", env))
        env.update(endpoints.env())
        procs, url = start_services(stack, env, run_dir, neighbours=list(endpoints.pids.values()))
        extra: dict[str, ServiceProcess] = {}
        needs_second = set(args.scenarios) & {"standby", "handoff", "rolling"}
        supervisor = Supervisor([endpoints.units, procs, extra], lambda line: print(line, flush=True))
        stack.callback(supervisor.stop)
        supervisor.start()
        bench = Bench(url, model.name, procs, extra, supervisor, args)
        if "restart" in args.scenarios:
            results += asyncio.run(measure(bench, ["restart"]))
        if needs_second:
            extra["worker-2"] = ServiceProcess("worker-2", "services.worker", {
                **env, "WORKER_MODEL": model.name, "SLUICE_DRAIN_S": "0"}, run_dir / "worker-2.log")
            stack.callback(lambda: extra["worker-2"].stop())
            extra["worker-2"].wait_ready(600)
            results += asyncio.run(measure(bench, [s for s in args.scenarios if s != "restart"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("SLUICE_MODEL"))
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1500, help="length of the shortest stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=["restart", "standby", "handoff", "rolling"])
    parser.add_argument("--docs", type=Path, help="rewrite the results section of this file")
    args = parser.parse_args()
    model = Path(args.model) if args.model else ROOT / ".cache" / "models" / "sluice-tiny-dsv3"
    if not is_built(model):
        raise SystemExit(f"no model at {model}: run `make model`")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = render(run(args, model), args, when, machine.describe())
    print(table)
    if args.docs is not None:
        write_docs(args.docs, table)


MARK = "<!-- failover results -->"


def write_docs(path: Path, table: str) -> None:
    text = path.read_text()
    head, _, rest = text.partition(MARK)
    _, _, tail = rest.partition(MARK)
    path.write_text(f"{head}{MARK}\n{table}\n{MARK}{tail}")


if __name__ == "__main__":
    main()
