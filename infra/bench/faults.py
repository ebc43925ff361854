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
import signal
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra import watchdog
from infra.bench import failover, machine
from infra.bench.streams import Stream, complete, resume, start_streams
from infra.localinfra import ROOT, local_infra
from infra.models.folder import is_built
from infra.procs import PortProcess, ServiceProcess, gateway_urls, start_services
from infra.supervise import Supervisor
from shared.contracts import Codec, LogRecord, TokenDelta

GRACE_S = 15.0  # GATEWAY_RESUME_GRACE_S's default
LEASE_S = 4.0


@dataclass
class Row:
    fault: str
    sent: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    longest_stall_s: float = 0.0
    note: str = ""

    def count(self, streams: list[Stream]) -> None:
        for s in streams:
            self.sent += 1
            if s.complete():
                self.completed += 1
            elif s.errors or s.status != 200:
                self.failed += 1
            else:
                self.lost += 1
            self.longest_stall_s = max(self.longest_stall_s, s.longest_gap())


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    resume_s: list[float] = field(default_factory=list)
    orphan_s: list[float] = field(default_factory=list)
    failover: list[failover.Scenario] = field(default_factory=list)


def _lengths(n: int, base: int) -> list[int]:
    return [base + 11 * i for i in range(n)]


class Stack:
    """A running stack and how to hurt it."""

    def __init__(self, units: dict[str, PortProcess], procs: dict[str, ServiceProcess],
                 supervisor: Supervisor, model: str, kafka: str) -> None:
        self.units, self.procs, self.supervisor = units, procs, supervisor
        self.model, self.kafka = model, kafka

    @property
    def urls(self) -> list[str]:
        return gateway_urls(self.procs)

    def table(self, name: str) -> dict:
        return self.units if name in self.units else self.procs

    def kill(self, name: str, hold: bool = False) -> PortProcess | ServiceProcess:
        if hold:
            self.supervisor.hold(name)
        victim = self.table(name)[name]
        victim.proc.kill()
        victim.proc.wait(30)
        return victim

    def revive(self, name: str, victim) -> None:
        """Start a process killed with hold=True again, as the supervisor would."""
        victim.reap()
        watchdog.forget(victim.proc.pid)
        fresh = self.table(name)[name] = victim.respawn()
        fresh.wait_ready(240)
        self.supervisor.release(name)

    def signal(self, name: str, sig: int) -> None:
        self.table(name)[name].proc.send_signal(sig)


async def _attempts(http, model: str, n: int, tag: str, tokens: int = 8) -> list[Stream]:
    out = []
    for i in range(n):
        s = Stream(tokens)
        out.append(await complete(http, model, f"{tag} {i}", s))
    return out


class Faults:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession, args: argparse.Namespace,
                 results: Results) -> None:
        self.stack, self.http, self.args, self.results = stack, http, args, results

    @property
    def model(self) -> str:
        return self.stack.model

    async def gateway_kill(self) -> None:
        row = Row("gateway killed (SIGKILL); its clients resume on the other gateway")
        for _ in range(self.args.rounds):
            tasks, progress = start_streams(self.http, self.model, _lengths(8, 600), "gw",
                                            url=self.stack.urls[1])
            await progress.all_have(20)
            victim = self.stack.procs["gateway-1"]
            victim.proc.kill()
            streams = list(await asyncio.gather(*tasks))
            await asyncio.gather(*(resume(self.http, s, self.stack.urls[0]) for s in streams))
            row.count(streams)
            self.results.resume_s += [r for s in streams for r in s.resumes]
            await asyncio.to_thread(self.stack.supervisor.wait_restarted, "gateway-1", victim, 240)
        self.results.rows.append(row)

    async def client_resume(self) -> None:
        row = Row("client disconnects mid-stream, resumes on another gateway")
        for _ in range(self.args.rounds):
            streams = [Stream(n) for n in _lengths(16, 300)]
            await asyncio.gather(*(complete(self.http, self.model, f"resume {i}", s, stop_at=30)
                                   for i, s in enumerate(streams)))
            await asyncio.gather(*(resume(self.http, s, self.stack.urls[1]) for s in streams))
            row.count(streams)
            self.results.resume_s += [r for s in streams for r in s.resumes]
        self.results.rows.append(row)

    async def orphans(self) -> None:
        """Streams of a gateway that died, which nobody resumes: when their generation stops."""
        codec = Codec(LogRecord)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition("sluice.replies", 1)  # gateway-1's home partition
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await consumer.position(tp)
            tasks, progress = start_streams(self.http, self.model, [4000] * 4, "orphan",
                                            url=self.stack.urls[1])
            await progress.all_have(5)
            victim = self.stack.procs["gateway-1"]
            victim.proc.kill()
            killed = time.time()
            streams = await asyncio.gather(*tasks)
            rids = {s.request_id.encode() for s in streams}
            finals: dict[bytes, float] = {}
            deadline = time.monotonic() + 120
            while len(finals) < len(rids) and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        if r.key in rids:
                            msg = codec.decode(r.value)
                            if isinstance(msg, TokenDelta) and msg.finished:
                                finals[r.key] = r.timestamp / 1000 - killed
            self.results.orphan_s += list(finals.values())
            if len(finals) < len(rids):
                print(f"orphans: {len(rids) - len(finals)} generations did not stop within 120 s")
            await asyncio.to_thread(self.stack.supervisor.wait_restarted, "gateway-1", victim, 240)
        finally:
            await consumer.stop()

    async def broker_pause(self) -> None:
        row = Row("the broker paused 5 s (SIGSTOP, SIGCONT)")
        for _ in range(self.args.rounds):
            tasks, progress = start_streams(self.http, self.model, _lengths(8, 400), "pause")
            await progress.all_have(10)
            self.stack.signal("kafka", signal.SIGSTOP)
            try:
                during = asyncio.create_task(_attempts(self.http, self.model, 2, "during pause"))
                await asyncio.sleep(5)
            finally:
                self.stack.signal("kafka", signal.SIGCONT)
            streams = list(await asyncio.gather(*tasks)) + await during
            row.count(streams)
        row.note = "requests sent during the pause wait for it (up to GATEWAY_PUBLISH_TIMEOUT_S)"
        self.results.rows.append(row)

    async def cluster_down(self) -> None:
        row = Row("the whole cluster down 20 s (the broker killed, then restarted)")
        fast, recovered, cut_resumed, error_after = [], [], 0, []
        for _ in range(self.args.rounds):
            tasks, progress = start_streams(self.http, self.model, [3000] * 4, "outage")
            await progress.all_have(10)
            victim = await asyncio.to_thread(self.stack.kill, "kafka", True)
            killed = time.monotonic()
            await asyncio.sleep(4)
            for s in await _attempts(self.http, self.model, 4, "outage new"):
                row.count([s])
            for _ in range(4):
                started = time.monotonic()
                s = Stream(8)
                await complete(self.http, self.model, "outage fast", s)
                fast.append(time.monotonic() - started)
                row.count([s])
            streams = list(await asyncio.gather(*tasks))
            error_after.append(time.monotonic() - killed)
            row.count(streams)
            await asyncio.sleep(max(0.0, 20 - (time.monotonic() - killed)))
            await asyncio.to_thread(self.stack.revive, "kafka", victim)
            back = time.monotonic()
            while True:
                s = Stream(4)
                await complete(self.http, self.model, "after outage", s)
                if s.complete():
                    break
                await asyncio.sleep(0.25)
            recovered.append(time.monotonic() - back)
            for s in streams:  # the client resumes once the outage is over
                s.errors.clear()
                s.done = False
                if await resume(self.http, s) == 200 and s.done:
                    cut_resumed += 1
        row.note = (f"by design: new requests got 503 in {max(fast):.2f} s at most once the gateway "
                    f"saw the outage; open streams ended with an error event "
                    f"{max(error_after):.1f} s after the kill; the first request after the "
                    f"broker's return succeeded within {max(recovered):.1f} s; "
                    f"{cut_resumed} of {4 * self.args.rounds} cut streams resumed afterwards")
        self.results.rows.append(row)

    async def redis_down(self, name: str) -> None:
        what = "state" if name == "redis" else "cache"
        row = Row(f"Redis ({what}) down 10 s (killed, then restarted empty)")
        for _ in range(self.args.rounds):
            tasks, progress = start_streams(self.http, self.model, _lengths(4, 300), f"no-{name}")
            await progress.all_have(5)
            victim = await asyncio.to_thread(self.stack.kill, name, True)
            killed = time.monotonic()
            fresh = await _attempts(self.http, self.model, 8, f"without {name}")
            streams = list(await asyncio.gather(*tasks)) + fresh
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - killed)))
            await asyncio.to_thread(self.stack.revive, name, victim)
            streams += await _attempts(self.http, self.model, 4, f"after {name}")
            row.count(streams)
        self.results.rows.append(row)

    async def redis_state_down(self) -> None:
        await self.redis_down("redis")

    async def redis_cache_down(self) -> None:
        await self.redis_down("redis-cache")

    async def redis_paused(self) -> None:
        row = Row("Redis (state) paused 10 s")
        before = [await self._ttft(f"before {i}", row) for i in range(5)]
        during = []
        self.stack.signal("redis", signal.SIGSTOP)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                during.append(await self._ttft(f"paused {len(during)}", row))
        finally:
            self.stack.signal("redis", signal.SIGCONT)
        row.note = (f"TTFT p50 {statistics.median(before) * 1000:.0f} ms before, "
                    f"{statistics.median(during) * 1000:.0f} ms during; the slowest request "
                    f"during the pause took {max(during) * 1000:.0f} ms to its first token")
        self.results.rows.append(row)

    async def _ttft(self, tag: str, row: Row) -> float:
        s = Stream(4)
        started = time.monotonic()
        await complete(self.http, self.model, tag, s)
        row.count([s])
        return (s.arrivals[0] - started) if s.arrivals else float("nan")

    async def redis_restart(self) -> None:
        row = Row("Redis (state) restarted empty under load")
        results: list[Stream] = []
        stop = asyncio.Event()

        async def load(slot: int) -> None:
            n = 0
            while not stop.is_set():
                s = Stream(8)
                results.append(await complete(self.http, self.model, f"restart {slot}.{n}", s))
                n += 1

        loaders = [asyncio.create_task(load(i)) for i in range(4)]
        await asyncio.sleep(2)
        victim = await asyncio.to_thread(self.stack.kill, "redis", True)
        await asyncio.to_thread(self.stack.revive, "redis", victim)
        await asyncio.sleep(5)
        stop.set()
        await asyncio.gather(*loaders)
        row.count(results)
        self.results.rows.append(row)

    async def broker_kill(self) -> None:
        """On the three-broker stack."""
        row = Row("one broker of three killed (SIGKILL): the reply partition's leader")
        for _ in range(self.args.rounds):
            tasks, progress = start_streams(self.http, self.model, _lengths(8, 600), "broker")
            await progress.all_have(10)
            leader = await _reply_leader(self.stack.kafka)
            name = f"kafka-{leader}"
            victim = await asyncio.to_thread(self.stack.kill, name, True)
            streams = list(await asyncio.gather(*tasks))
            row.count(streams)
            await asyncio.to_thread(self.stack.revive, name, victim)
        self.results.rows.append(row)


async def _reply_leader(bootstrap: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics(["sluice.replies"])
        return next(p["leader"] for p in topic["partitions"] if p["partition"] == 0)
    finally:
        await admin.close()


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
    rows = [Row(f"worker fault: {sc.fault}", sc.sent, sc.completed, sc.failed, sc.lost,
                sc.longest_stall_s) for sc in results.failover] + results.rows
    lines = ["| fault | requests sent | completed | failed | lost | longest stall (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    notes = []
    for row in rows:
        mark = ""
        if row.note:
            notes.append(row.note)
            mark = f" [{len(notes)}]"
        lines.append(f"| {row.fault}{mark} | {row.sent} | {row.completed} | {row.failed} | "
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
