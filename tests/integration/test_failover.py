"""Workers and engines die, drain and join under load; every stream still completes.

Each test drives 16 concurrent greedy streams of distinct lengths (so a stream that got
another's tokens, lost some or got some twice shows in its count) through the gateway,
then kills, stops or adds a worker of the text model mid-stream. The stack's supervisor
restarts a worker that exits, as `make up` does. Batched bf16 arithmetic makes greedy text
depend slightly on batch composition, so under concurrency the check is that the text a
client had before the fault is an exact prefix of its final text; the token-exact check
(the whole text equals an undisturbed run) is done one stream at a time at float32, on
the Qwen3-MoE model (vLLM's CPU MoE kernel for the DeepSeek-V3 model takes bf16 only).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import psutil
import pytest
from aiokafka import TopicPartition
from redis.asyncio import Redis

from infra.procs import ServiceProcess, detail
from services.worker.main import EXIT_ENGINE_DIED
from shared.bus import Meta, ReplyTo
from shared.contracts import (Codec, ErrorReply, GenerateRequest, LogRecord, Reply, Sampling,
                              StreamOpened, TextPrompt,
                              TokenizedRequest)
from tests.integration.conftest import LEASE_S, Stack, metrics_url
from tests.integration.helpers import eventually, metric, producer, reader, wait_for_record
from infra.bench.streams import Progress, Stream, complete, start_streams

pytestmark = pytest.mark.stack

STREAMS = 16
ADMISSIONS = "sluice_worker_engine_admissions_total"
WAITED = "sluice_worker_waited_total"


def lengths(base: int) -> list[int]:
    return [base + 13 * i for i in range(STREAMS)]


async def finish(tasks: list[asyncio.Task], timeout: float = 300) -> list[Stream]:
    return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout))


def assert_all_complete(results: list[Stream], before: list[list[str]]) -> int:
    """Every stream got exactly its tokens, and what it had before the fault is a prefix of
    what it got in the end. Returns how many were cut mid-stream by the fault."""
    for i, (stream, had) in enumerate(zip(results, before)):
        assert stream.complete(), (i, stream.status, stream.errors, stream.finish,
                                   len(stream.tokens), stream.max_tokens, stream.usage)
        assert stream.tokens[:len(had)] == had, f"stream {i}: the text changed after the fault"
    return sum(0 < len(had) < s.max_tokens for s, had in zip(results, before))


async def gateway_takeovers(http) -> float:
    return await metric(http, "/metrics", "sluice_gateway_stream_takeovers_total")


async def wait_exit(proc: ServiceProcess, timeout: float = 120) -> int:
    return await asyncio.to_thread(proc.proc.wait, timeout)


@pytest.fixture(scope="module")
async def extra(stack: Stack) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Extra workers a test starts; whatever is left is stopped after the module."""
    workers: dict[str, ServiceProcess] = {}
    yield workers
    for proc in workers.values():
        await asyncio.to_thread(proc.stop)


async def alone(extra: dict[str, ServiceProcess]) -> None:
    """Only the stack's own workers: one left by an earlier test would share the load."""
    for name in list(extra):
        await asyncio.to_thread(extra.pop(name).stop)


def start_worker(stack: Stack, name: str, model: str, **env: str) -> ServiceProcess:
    return stack.start(name, "services.worker", WORKER_MODEL=model, timeout=420, **env)


async def test_a_second_worker_joining_mid_load_runs_nothing_twice(http, stack, extra):
    """Its partitions move while requests run: whoever gets a redelivered running request
    waits for its owner instead of running it again, and nothing is committed past it."""
    first = metrics_url(stack.procs[stack.text_worker])
    before = await metric(http, first, ADMISSIONS)
    results: list[Stream] = []
    joined = asyncio.Event()

    async def load(slot: int) -> None:
        n = 0
        while not joined.is_set():
            s = Stream(300 + 7 * slot)
            results.append(await complete(http, stack.model, f"join {slot}.{n}: once", s))
            n += 1

    waited = await metric(http, first, WAITED)
    loaders = [asyncio.create_task(load(i)) for i in range(6)]
    try:
        # A vLLM worker starts slowly on two loaded cores (minutes): its imports compete with the load.
        second = await asyncio.to_thread(start_worker, stack, "worker-2", stack.model, SLUICE_DRAIN_S="0")
        extra["worker-2"] = second
        # The load runs on across the rebalance, until the new worker has run some of it.
        await eventually(lambda: _ran_some(http, metrics_url(second)), timeout=120)
    finally:
        joined.set()
    await asyncio.wait_for(asyncio.gather(*loaders), 300)
    assert all(s.complete() for s in results), [(s.status, s.errors) for s in results if not s.complete()]
    ran = (await metric(http, first, ADMISSIONS) - before) + await metric(http, metrics_url(second), ADMISSIONS)
    assert ran == len(results), f"{len(results)} requests, {ran} engine admissions"
    # The partitions moved while requests ran: copies of running requests were delivered
    # again, and waited for rather than run.
    assert (await metric(http, first, WAITED) - waited
            + await metric(http, metrics_url(second), WAITED)) > 0


async def _ran_some(http, url: str) -> bool:
    return await metric(http, url, ADMISSIONS) > 0


async def test_a_paused_worker_that_lost_its_claims_sends_nothing_more(http, stack, extra):
    """SIGSTOP a worker for longer than its lease: the other worker takes its streams over.
    When it runs again, its engine has kept generating, but it finds its claims gone and
    sends none of that: the clients' streams stay whole, and the reply log holds no message
    of the old claim after the takeover, but for one already on its way when it stopped."""
    second = extra.get("worker-2") or await asyncio.to_thread(
        start_worker, stack, "worker-2", stack.model, SLUICE_DRAIN_S="0")
    extra["worker-2"] = second
    first = stack.procs[stack.text_worker]
    urls = {p: metrics_url(p) for p in (first, second)}
    async with reader(stack.kafka, stack.reply_topic, from_start=False) as replies:
        tasks, progress = start_streams(http, stack.model, lengths(900), "pause")
        await progress.all_have(8)
        victim = [p for p in urls if await _busy(http, urls[p])][0]
        fenced = await metric(http, urls[victim], "sluice_worker_fenced_total")
        takeovers = await gateway_takeovers(http)
        before = progress.snapshot()
        victim.signal(signal.SIGSTOP)
        try:
            # The pause itself (time is the fault): past the lease (4 s), the other worker's
            # sweep (1 s) and its first continued tokens.
            await asyncio.sleep(LEASE_S + 6)
        finally:
            victim.signal(signal.SIGCONT)
        results = await finish(tasks)
        cut = assert_all_complete(results, before)
        assert cut > 0
        assert await gateway_takeovers(http) > takeovers  # taken over while it was stopped
        await eventually(lambda: _fenced_more(http, urls[victim], fenced))
        log = await asyncio.wait_for(
            _replies_of(replies, stack.reply_topic, {s.request_id for s in results}), 60)
    taken_over = {rid: records for rid, records in log.items() if any(e > 0 for e, _ in records)}
    assert taken_over, "no stream in the log was continued at a newer epoch"
    for rid, records in taken_over.items():
        first_taken = next(i for i, (epoch, _) in enumerate(records) if epoch > 0)
        late = [r for r in records[first_taken:] if r[0] == 0]
        assert len(late) <= 1, f"{rid}: the paused worker sent {late} after the takeover"


async def _replies_of(consumer, topic: str, rids: set[str]) -> dict[str, list[tuple[int, int]]]:
    """(epoch, seq) of every reply of these requests, in log order, up to the log's end."""
    codec = Codec(LogRecord)
    out: dict[str, list[tuple[int, int]]] = {rid: [] for rid in rids}
    tp = TopicPartition(topic, 0)
    end = (await consumer.end_offsets([tp]))[tp]
    while await consumer.position(tp) < end:
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            for record in records:
                if record.key and record.key.decode() in out:
                    msg = codec.decode(record.value)
                    if not isinstance(msg, StreamOpened):  # the gateway's stream header
                        out[msg.request_id].append((msg.epoch, msg.seq))
    return out


async def _fenced_more(http, url: str, before: float) -> bool:
    return await metric(http, url, "sluice_worker_fenced_total") > before


async def test_sigterm_with_no_drain_time_hands_requests_to_a_live_worker(http, stack, extra):
    """SLUICE_DRAIN_S=0: the stopping worker sends what it generated, releases its claims,
    and the other worker continues those streams where they stand."""
    second = extra.get("worker-2") or await asyncio.to_thread(
        start_worker, stack, "worker-2", stack.model, SLUICE_DRAIN_S="0")
    extra["worker-2"] = second
    takeovers = await gateway_takeovers(http)
    tasks, progress = start_streams(http, stack.model, lengths(900), "handoff")
    await progress.all_have(8)
    await eventually(lambda: _busy(http, metrics_url(second)))
    before = progress.snapshot()
    second.signal(signal.SIGTERM)
    assert await wait_exit(second) == 0
    del extra["worker-2"]
    results = await finish(tasks)
    cut = assert_all_complete(results, before)
    assert cut > 0
    assert await gateway_takeovers(http) - takeovers > 0  # some streams moved to the first worker
    # Handed over, not left to lapse: the first worker's sweep (every lease/4) took them at
    # once, where a lapsed lease would have stalled them for a whole lease first.
    assert max(s.longest_gap() for s in results) < LEASE_S, [s.longest_gap() for s in results]


async def _busy(http, url: str) -> bool:
    return await metric(http, url, "sluice_worker_in_flight") > 0


async def test_sigterm_drains_the_running_streams(http, stack, extra):
    """SLUICE_DRAIN_S (20 s here) is enough for the streams to finish where they run."""
    await alone(extra)
    worker = stack.procs[stack.text_worker]
    takeovers = await gateway_takeovers(http)
    tasks, progress = start_streams(http, stack.model, lengths(600), "drain")
    await progress.all_have(8)
    before = progress.snapshot()
    worker.signal(signal.SIGTERM)
    results = await finish(tasks)
    assert await wait_exit(worker) == 0
    assert_all_complete(results, before)
    assert await gateway_takeovers(http) == takeovers  # finished on the draining worker
    await asyncio.to_thread(stack.restarted, stack.text_worker, worker)


async def test_sigkill_of_the_only_worker_loses_no_stream(http, stack, extra):
    """Its leases lapse; the supervisor restarts it; the new process takes every stream
    over from the reply log and continues it."""
    await alone(extra)
    worker = stack.procs[stack.text_worker]
    takeovers = await gateway_takeovers(http)
    tasks, progress = start_streams(http, stack.model, lengths(1000), "sigkill")
    await progress.all_have(8)
    before = progress.snapshot()
    os.kill(worker.proc.pid, signal.SIGKILL)
    results = await finish(tasks)
    assert assert_all_complete(results, before) == STREAMS
    assert await gateway_takeovers(http) - takeovers == STREAMS
    await asyncio.to_thread(stack.restarted, stack.text_worker, worker)


async def test_redis_restarted_empty_and_the_worker_killed_loses_no_stream(http, stack, extra):
    """Redis (without persistence) is killed with the worker: the claims are gone when the
    restarted worker gets the requests again. It sees they were made before the store
    restarted, reads their streams from the reply log, and continues them."""
    await alone(extra)
    worker, redis = stack.procs[stack.text_worker], stack.infra["redis"]
    takeovers = await gateway_takeovers(http)
    tasks, progress = start_streams(http, stack.model, lengths(1000), "redis-lost")
    await progress.all_have(8)
    before = progress.snapshot()
    os.kill(worker.proc.pid, signal.SIGKILL)
    os.kill(redis.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(stack.supervisor.wait_restarted, "redis", redis, 60)
    results = await finish(tasks)
    assert assert_all_complete(results, before) == STREAMS
    assert await gateway_takeovers(http) - takeovers == STREAMS
    await asyncio.to_thread(stack.restarted, stack.text_worker, worker)


async def test_engine_death_hands_over_and_the_worker_exits_non_zero(http, stack, extra):
    """Only vLLM's EngineCore dies. The worker sends what it has, releases its claims,
    stops advertising itself and exits non-zero; its model gets fast 503s (and only it)
    until the restarted worker takes the streams over."""
    await alone(extra)
    worker = stack.procs[stack.text_worker]
    (core,) = [p for p in psutil.Process(worker.proc.pid).children(recursive=True)
               if p.name() == "VLLM::EngineCore"]
    tasks, progress = start_streams(http, stack.model, lengths(1000), "engine")
    await progress.all_have(8)
    before = progress.snapshot()
    core.kill()
    assert await wait_exit(worker) == EXIT_ENGINE_DIED
    # Handed over: every unfinished stream's claim was released before the worker exited
    # (not left for its lease to lapse), and the worker left the registry (sooner than the
    # lease after which it would have dropped out by itself).
    claims = await _claim_states(stack, [s.request_id for s, had in zip(progress.streams, before)
                                         if not s.done])
    assert claims and set(claims.values()) <= {"released", "done"}, claims
    await eventually(lambda: _model_state(http, stack.model, "unavailable"), timeout=LEASE_S / 2)
    refused = Stream(4)
    await complete(http, stack.model, "while nobody serves it", refused)
    assert refused.status == 503 and refused.errors[0]["error"]["code"] == "unavailable"
    served = Stream(4)
    await complete(http, stack.vl_model, "the other model still serves", served)
    assert served.complete()
    assert assert_all_complete(await finish(tasks), before) == STREAMS
    await asyncio.to_thread(stack.restarted, stack.text_worker, worker)
    await eventually(lambda: _model_state(http, stack.model, "ready"), timeout=10)


async def _claim_states(stack: Stack, request_ids: list[str]) -> dict[str, str]:
    redis = Redis.from_url(stack.env["REDIS_URL"])
    try:
        return {rid: (await redis.hget(f"sluice:claim:{rid}", "state") or b"").decode()
                for rid in request_ids}
    finally:
        await redis.aclose()


async def _model_state(http, model: str, state: str) -> bool:
    async with http.get("/ready") as resp:
        body = await resp.json()
    assert resp.status == 200, body  # the gateway itself stays ready
    return body["models"][model] == state


async def test_a_takeover_by_a_standby_worker_is_token_exact(http, stack, extra):
    """One stream at a time at float32: the text of a stream whose worker was killed
    mid-stream equals the undisturbed run's, token for token."""
    name = f"worker-cpu.{stack.vl_model}"
    await asyncio.to_thread(stack.restart, name, WORKER_DTYPE="float32")
    standby = await asyncio.to_thread(start_worker, stack, "worker-vl-standby", stack.vl_model,
                                      WORKER_DTYPE="float32")
    extra["worker-vl-standby"] = standby
    try:
        prompt = "Token-exact: once upon a time"
        undisturbed = await complete(http, stack.vl_model, prompt, Stream(1200))
        assert undisturbed.complete()
        disturbed = Stream(1200)
        progress = Progress([disturbed])
        task = asyncio.create_task(complete(http, stack.vl_model, prompt, disturbed, progress))
        await progress.all_have(200)
        owner = await _owner(stack, disturbed.request_id)
        victim = next(p for p in (stack.procs[name], standby) if detail(p.ready_detail, "owner") == owner)
        takeovers = await gateway_takeovers(http)
        os.kill(victim.proc.pid, signal.SIGKILL)
        await asyncio.wait_for(task, 300)
        assert disturbed.complete(), (disturbed.errors, len(disturbed.tokens))
        assert await gateway_takeovers(http) == takeovers + 1  # it was cut, and continued
        assert disturbed.tokens == undisturbed.tokens
        if victim is standby:
            del extra["worker-vl-standby"]
        else:
            await asyncio.to_thread(stack.restarted, name, victim)
    finally:
        await asyncio.to_thread(stack.restart, name)  # back to the stack's own settings


async def _owner(stack: Stack, request_id: str) -> str:
    redis = Redis.from_url(stack.env["REDIS_URL"])
    try:
        deadline = time.monotonic() + 10
        while (owner := await redis.hget(f"sluice:claim:{request_id}", "owner")) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        return owner.decode()
    finally:
        await redis.aclose()


async def test_an_expired_request_is_answered_with_a_timeout_and_never_reaches_the_engine(
        http, stack):
    """As an integration would send them: a request whose deadline passed reaches the
    tokenizer, or the worker. Each answers with a timeout error and does no work."""
    worker = metrics_url(stack.procs[stack.text_worker])
    before = await metric(http, worker, ADMISSIONS)
    expired_before = await metric(http, worker, "sluice_worker_expired_total")
    past = time.time() - 1
    tokenized = TokenizedRequest(request_id="expired-at-worker", model=stack.model,
                                 prompt_token_ids=[5, 6, 7], created=past - 1, deadline=past,
                                 sampling=Sampling(max_tokens=8))
    generate = GenerateRequest(request_id="expired-at-tokenizer", model=stack.model,
                               prompt=TextPrompt(text="late"), created=past - 1, deadline=past,
                               sampling=Sampling(max_tokens=8))
    codec = Codec(Reply)
    async with reader(stack.kafka, stack.reply_topic, from_start=False) as replies, \
            producer(stack.kafka) as p:
        for topic, msg in ((f"sluice.infer.cpu.{stack.model}", tokenized), ("sluice.requests", generate)):
            meta = Meta(msg.request_id, ReplyTo(stack.reply_topic, 0))
            await p.send_and_wait(topic, Codec(type(msg)).encode(msg), key=msg.request_id.encode(),
                                  headers=meta.headers(str(type(msg).__struct_config__.tag)))
        answers = {}
        for _ in range(2):
            record = await wait_for_record(
                replies, lambda r: r.key in (b"expired-at-worker", b"expired-at-tokenizer")
                and r.key.decode() not in answers)
            answers[record.key.decode()] = codec.decode(record.value)
    for rid, answer in answers.items():
        assert isinstance(answer, ErrorReply), answer
        assert (answer.error.status, answer.error.code) == (504, "deadline_exceeded"), rid
    assert await metric(http, worker, ADMISSIONS) == before
    assert await metric(http, worker, "sluice_worker_expired_total") == expired_before + 1


async def test_a_client_timeout_header_shortens_the_deadline(http, stack):
    late = Stream(8)
    await complete(http, stack.model, "too late", late, headers={"X-Request-Timeout": "0.000001"})
    assert late.status == 504 and late.errors[0]["error"]["code"] == "deadline_exceeded"
    bad = Stream(8)
    await complete(http, stack.model, "bad timeout", bad, headers={"X-Request-Timeout": "soon"})
    assert bad.status == 400 and bad.errors[0]["error"]["param"] == "X-Request-Timeout"
