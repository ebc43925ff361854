"""The fault scenarios of infra.bench.faults: what each fault does to a running stack and
what its clients saw (one Row per fault)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra import watchdog
from infra.bench import failover
from infra.bench.streams import Stream, complete, resume, start_streams
from infra.procs import PortProcess, ServiceProcess, gateway_urls
from infra.supervise import Supervisor
from shared.contracts import Codec, LogRecord, TokenDelta

GRACE_S = 15.0  # GATEWAY_RESUME_GRACE_S's default
LEASE_S = 4.0


def table_row(fault: str) -> failover.Scenario:
    """One row of the table: a fault and what its clients saw."""
    return failover.Scenario(name=fault, fault=fault)


@dataclass
class Results:
    rows: list[failover.Scenario] = field(default_factory=list)
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
        row = table_row("gateway killed (SIGKILL); its clients resume on the other gateway")
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
        row = table_row("client disconnects mid-stream, resumes on another gateway")
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
        row = table_row("the broker paused 5 s (SIGSTOP, SIGCONT)")
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
        row = table_row("the whole cluster down 20 s (the broker killed, then restarted)")
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
                if await resume(self.http, s) == 200 and s.complete():  # exactly the rest
                    cut_resumed += 1
        row.note = (f"by design: new requests got 503 in {max(fast):.2f} s at most once the gateway "
                    f"saw the outage; open streams ended with an error event "
                    f"{max(error_after):.1f} s after the kill; the first request after the "
                    f"broker's return succeeded within {max(recovered):.1f} s; "
                    f"{cut_resumed} of {4 * self.args.rounds} cut streams resumed afterwards and "
                    f"got exactly the rest of their tokens")
        self.results.rows.append(row)

    async def redis_down(self, name: str) -> None:
        what = "state" if name == "redis" else "cache"
        row = table_row(f"Redis ({what}) down 10 s (killed, then restarted empty)")
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
        row = table_row("Redis (state) paused 10 s, and 3 s after")
        before = [await self._ttft(f"before {i}", row) for i in range(5)]
        during = []
        self.stack.signal("redis", signal.SIGSTOP)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                during.append(await self._ttft(f"paused {len(during)}", row))
        finally:
            self.stack.signal("redis", signal.SIGCONT)
        resumed = time.monotonic()
        while time.monotonic() - resumed < 3:  # the registry is stale right after the pause
            await self._ttft("after the pause", row)
        row.note = (f"TTFT p50 {statistics.median(before) * 1000:.0f} ms before, "
                    f"{statistics.median(during) * 1000:.0f} ms during; the slowest request "
                    f"during the pause took {max(during) * 1000:.0f} ms to its first token")
        self.results.rows.append(row)

    async def _ttft(self, tag: str, row: failover.Scenario) -> float:
        s = Stream(4)
        started = time.monotonic()
        await complete(self.http, self.model, tag, s)
        row.count([s])
        return (s.arrivals[0] - started) if s.arrivals else float("nan")

    async def redis_restart(self) -> None:
        row = table_row("Redis (state) restarted empty under load")
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
        row = table_row("one broker of three killed (SIGKILL): the reply partition's leader")
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
