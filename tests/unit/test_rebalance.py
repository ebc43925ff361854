"""Partitions moving while requests run: no request runs twice, none is committed past while
it runs. A fake broker moves one partition between consumers; the worker's group handler
(WorkerService.settle) runs against fake claims (Redis's scripts are tested for real in
tests/integration/test_claims.py) and a fake engine run.

The first test reproduces the loss the worker had before claims: a copy redelivered to the
consumer that still runs the request was dropped as a duplicate, so its offset counted as
done and the commit moved past a running request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition

from shared.bus import Meta, RecordLoc, ReplyTo
from shared.claims import Claim, Standing
from shared.consumer import GroupRunner
from shared.contracts import Codec, Sampling, TokenizedRequest

from services.worker.ownership import Outcome, Ownership
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from services.worker.takeover import Sweeper

TP = TopicPartition("infer", 0)
CODEC = Codec(TokenizedRequest)


@dataclass
class Record:
    offset: int
    value: bytes
    headers: tuple
    topic: str = TP.topic
    partition: int = TP.partition
    key: bytes | None = None


def record(offset: int, rid: str) -> Record:
    req = TokenizedRequest(request_id=rid, model="m", prompt_token_ids=[1], created=0.0,
                           sampling=Sampling(max_tokens=4))
    meta = Meta(rid, ReplyTo("replies", 0))
    return Record(offset, CODEC.encode(req), tuple(meta.headers("tokenized_request")))


class Broker:
    """One partition's log, its committed offset, and which consumer has it."""

    def __init__(self, rids: list[str]) -> None:
        self.log = [record(i, rid) for i, rid in enumerate(rids)]
        self.committed = 0
        self.commits: list[int] = []
        self.foreign_commits: list[int] = []  # by a consumer that did not own the partition
        self._changed = asyncio.Condition()

    async def committed_at(self, offset: int, timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.committed == offset), timeout)

    async def move(self, old: FakeConsumer | None, new: FakeConsumer) -> None:
        """An eager rebalance: the old owner's partition is revoked, then assigned to `new`
        (possibly the same consumer), which reads on from the committed offset."""
        if old is not None:
            await old.listener.on_partitions_revoked({TP})
            old.assigned = False
        new.position, new.assigned = self.committed, True
        new.read_all.clear()
        await new.listener.on_partitions_assigned({TP})


class FakeConsumer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.assigned = False
        self.position = 0
        self.listener = None
        self.read_all = asyncio.Event()  # every record since the assignment was handed out

    async def caught_up(self) -> None:
        await asyncio.wait_for(self.read_all.wait(), 5)

    def subscribe(self, topics, listener=None):
        self.listener = listener

    def assignment(self):
        return {TP} if self.assigned else set()

    def pause(self, *tps): pass

    def resume(self, *tps): pass

    def paused(self):
        return set()

    async def getmany(self, timeout_ms=0, max_records=None):
        if self.assigned and self.position < len(self.broker.log):
            batch = self.broker.log[self.position:self.position + (max_records or 100)]
            self.position += len(batch)
            if self.position == len(self.broker.log):
                self.read_all.set()
            return {TP: batch}
        await asyncio.sleep(0.005)
        return {}

    async def commit(self, offsets):
        if not self.assigned:  # a real broker refuses it; the test fails on it (see stop())
            self.broker.foreign_commits.append(offsets[TP])
            return
        async with self.broker._changed:
            self.broker.committed = offsets[TP]
            self.broker.commits.append(offsets[TP])
            self.broker._changed.notify_all()


class FakeClaims:
    """The semantics of shared.claims' scripts, in memory (leases never lapse here)."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self.done: set[str] = set()
        self.loc: dict[str, RecordLoc] = {}  # where each request's record is
        self.released: list[str] = []

    def __call__(self, owner: str) -> _Bound:
        return _Bound(self, owner)


class _Bound:
    def __init__(self, claims: FakeClaims, owner: str) -> None:
        self._c, self.owner = claims, owner

    async def acquire(self, rid: str, loc: RecordLoc | None, keep_ms: int) -> Claim:
        if rid in self._c.done:
            return Claim(Standing.DONE, 0, "", False, loc)
        holder = self._c.owner.get(rid)
        if holder is not None:
            return Claim(Standing.MINE if holder == self.owner else Standing.ELSEWHERE, 0, holder,
                         False, loc)
        self._c.owner[rid] = self.owner
        if loc is not None:
            self._c.loc[rid] = loc
        return Claim(Standing.ACQUIRED, 0, "", False, self._c.loc.get(rid))

    async def renew(self, held):
        return set()

    async def finish(self, rid: str, keep_ms: int) -> None:
        self._c.done.add(rid)
        self._c.owner.pop(rid, None)

    async def release(self, rid: str, epoch: int) -> bool:
        if self._c.owner.get(rid) != self.owner:
            return False
        del self._c.owner[rid]
        self._c.released.append(rid)
        return True


class FakeRunner:
    """The engine run: it finishes a request when the test says so; counts admissions."""

    def __init__(self, claims: _Bound) -> None:
        self.claims = claims
        self.gates: dict[str, asyncio.Event] = {}
        self.admitted: list[str] = []

    def gate(self, rid: str) -> asyncio.Event:
        return self.gates.setdefault(rid, asyncio.Event())

    async def run(self, owned, req, meta, mode) -> Outcome:
        self.admitted.append(req.request_id)
        await self.gate(req.request_id).wait()
        await self.claims.finish(req.request_id, 0)
        return Outcome.SETTLED

    async def release(self, owned) -> Outcome:
        await self.claims.release(owned.request_id, owned.epoch)
        return Outcome.HANDED_OVER


def worker(name: str, claims: FakeClaims) -> tuple[WorkerService, FakeRunner]:
    settings = WorkerSettings(
        kafka=None, redis=None, topics=None, model=None, engine=None, limits=None,  # type: ignore[arg-type]
        worker_id=name, group_id="g", max_in_flight=16, coalesce_ms=1, lease_s=0.2,
        session_timeout_ms=6000, metrics_port=-1, drain_s=1)
    svc = WorkerService(settings)
    bound = claims(svc.owner)
    svc._claims = bound  # type: ignore[assignment]
    svc._ownership = Ownership(bound, 0.2, engine_abort=_no_abort)  # type: ignore[arg-type]
    runner = FakeRunner(bound)
    svc._runner = runner  # type: ignore[assignment]
    return svc, runner


async def _no_abort(engine_id: str) -> None:
    pass


def group(consumer: FakeConsumer, handler) -> GroupRunner:
    runner = GroupRunner(consumer, TP.topic, CODEC, handler, publisher=None,  # type: ignore[arg-type]
                         deadletter_topic="dl", name="w", max_in_flight=16)
    runner.subscribe()
    return runner


async def quiesce() -> None:
    """Let every ready task run (handlers, the commit loop) before checking what did not happen."""
    for _ in range(100):
        await asyncio.sleep(0)


async def running(*gr: GroupRunner):
    return [asyncio.create_task(g.run()) for g in gr]


async def stop(tasks, *gr: GroupRunner, broker: Broker | None = None) -> None:
    for g in gr:
        g.stop()
    await asyncio.gather(*tasks)
    if broker is not None:
        assert broker.foreign_commits == [], "committed a partition it did not own"


async def test_before_claims_a_redelivered_running_request_was_committed_past():
    """The worker's old handler, kept here as the reference of the bug: `running` was its
    only record of a request, and a copy delivered while it ran was dropped at once."""
    broker = Broker(["a", "b"])
    consumer = FakeConsumer(broker)
    running_ids: set[str] = set()
    gate = asyncio.Event()

    async def old_handle(req: TokenizedRequest, meta: Meta) -> None:
        if req.request_id in running_ids:
            return  # "delivered twice while running; ignoring the copy"
        running_ids.add(req.request_id)
        try:
            if req.request_id == "a":
                await gate.wait()
        finally:
            running_ids.discard(req.request_id)

    gr = group(consumer, old_handle)
    await broker.move(None, consumer)
    tasks = await running(gr)
    await consumer.caught_up()
    await quiesce()
    assert broker.committed == 0  # "a" runs
    await broker.move(consumer, consumer)  # the same worker gets its partition back
    await consumer.caught_up()
    await broker.committed_at(2)  # the loss: committed past "a" while it still runs
    gate.set()
    await stop(tasks, gr)


async def test_the_same_worker_getting_its_partition_back_waits_for_its_own_run():
    broker = Broker(["a", "b"])
    consumer = FakeConsumer(broker)
    claims = FakeClaims()
    svc, engine = worker("A", claims)
    gr = group(consumer, svc.settle)
    await broker.move(None, consumer)
    tasks = await running(gr)
    await consumer.caught_up()
    await quiesce()
    engine.gate("b").set()  # "b" finishes; "a" still runs
    await quiesce()
    assert broker.committed == 0
    await broker.move(consumer, consumer)
    await consumer.caught_up()  # "a" and "b" delivered again
    await quiesce()
    assert broker.committed == 0, "a running request was committed past"
    engine.gate("a").set()
    await broker.committed_at(2)
    assert sorted(engine.admitted) == ["a", "b"], "a request ran twice"
    await stop(tasks, gr, broker=broker)


async def test_a_new_owner_waits_for_the_request_running_elsewhere_then_commits():
    broker = Broker(["a", "b", "c"])
    claims = FakeClaims()
    first, second = FakeConsumer(broker), FakeConsumer(broker)
    svc_a, engine_a = worker("A", claims)
    svc_b, engine_b = worker("B", claims)
    gr_a, gr_b = group(first, svc_a.settle), group(second, svc_b.settle)
    await broker.move(None, first)
    tasks = await running(gr_a, gr_b)
    await first.caught_up()
    await quiesce()
    engine_a.gate("b").set()
    await quiesce()
    await broker.move(first, second)  # worker B joins and gets the partition
    await second.caught_up()
    await asyncio.sleep(0.3)  # several claim polls (lease_s / 4): B keeps waiting all along
    assert max(broker.commits, default=0) == 0, "committed past a request running elsewhere"
    assert engine_b.admitted == []  # B ran nothing: "a" is A's, "b" is done, "c" ... is A's too
    engine_a.gate("a").set()
    engine_a.gate("c").set()
    await broker.committed_at(3)  # B polls the claims every lease_s / 4 and sees them done
    assert sorted(engine_a.admitted + engine_b.admitted) == ["a", "b", "c"]
    await stop(tasks, gr_a, gr_b, broker=broker)


async def test_an_unsettled_message_is_not_committed_past_and_leave_gives_partitions_up():
    from shared.consumer import NotSettled

    broker = Broker(["a", "b", "c"])
    consumer = FakeConsumer(broker)
    consumer.unsubscribed = False

    def unsubscribe():
        consumer.unsubscribed, consumer.assigned = True, False

    consumer.unsubscribe = unsubscribe

    async def handle(req: TokenizedRequest, meta: Meta) -> None:
        if req.request_id == "b":
            raise NotSettled("b")  # handed over: to be delivered again

    gr = group(consumer, handle)
    await broker.move(None, consumer)
    tasks = await running(gr)
    await consumer.caught_up()
    await broker.committed_at(1)  # "a" settled; "b" holds the commit back although "c" is done
    await quiesce()
    assert broker.committed == 1
    gr.stop()
    await gr.leave()
    assert consumer.unsubscribed
    await asyncio.gather(*tasks)
    await gr.drain(1)
    assert broker.committed == 1 and broker.foreign_commits == []


class BrokenLog:
    """The reply log: the request record can be read back, the stream cannot (a bug)."""

    def __init__(self, *records: Record) -> None:
        self.records = {(r.topic, r.partition, r.offset): r for r in records}

    async def record(self, topic: str, partition: int, offset: int):
        return self.records.get((topic, partition, offset))

    async def replies(self, queries):
        raise ValueError("a bug while reading the stream back")


async def test_a_takeover_that_fails_midway_leaves_nothing_held():
    """Its records are closed and its claims released, for the next owner: a record left
    open would have its lease renewed forever with nothing running it."""
    claims = FakeClaims()
    claims.loc["a"] = RecordLoc(TP.topic, TP.partition, 0)
    svc, engine = worker("B", claims)
    sweeper = Sweeper(svc._claims, svc._ownership, engine, BrokenLog(record(0, "a")),  # type: ignore[arg-type]
                      lease_s=0.2, max_in_flight=16, stopping=lambda: False)
    owned = svc._ownership.open("a")
    try:
        await sweeper.take_over([owned])
    except ValueError:
        pass
    else:
        raise AssertionError("the bug did not surface")
    assert "a" not in svc._ownership and owned.done.result() is Outcome.HANDED_OVER
    assert claims.released == ["a"] and engine.admitted == []


async def test_an_abort_of_a_request_not_here_yet_is_remembered_for_it():
    ownership = Ownership(FakeClaims()("A"), 0.2, engine_abort=_no_abort)  # type: ignore[arg-type]
    assert not await ownership.abort("x")  # still queued, say; Redis may be away
    assert ownership.open("x").aborted
    assert not ownership.open("y").aborted
