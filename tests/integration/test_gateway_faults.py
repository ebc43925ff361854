"""A gateway dies (SIGKILL) mid-stream: its clients resume their streams on the other gateway
and get exactly the rest; streams nobody resumes stop within the grace window (plus the
lease the dead gateway's last renewal had left) and a few seconds. The supervisor restarts
the gateway, as `make up` does."""

import asyncio
import time

import pytest

from infra.bench.streams import Stream, resume, start_streams
from shared.contracts import Codec, LogRecord, TokenDelta
from tests.integration.conftest import GRACE_S, LEASE_S
from tests.integration.helpers import reader

pytestmark = pytest.mark.stack

VICTIM = "gateway-1"  # the second gateway: its requests' replies are on partition 1


async def _kill_victim(stack) -> float:
    """SIGKILL the second gateway; returns when (wall clock). The supervisor restarts it."""
    victim = stack.procs[VICTIM]
    victim.proc.kill()
    killed = time.time()
    await asyncio.to_thread(stack.restarted, VICTIM, victim)
    return killed


async def test_clients_of_a_dead_gateway_resume_on_another_and_lose_nothing(http, stack):
    tasks, progress = start_streams(http, stack.model, [400 + 13 * i for i in range(8)], "gw-kill",
                                    url=stack.urls[1])
    await progress.all_have(20)
    before = progress.snapshot()
    victim = stack.procs[VICTIM]
    victim.proc.kill()
    streams: list[Stream] = list(await asyncio.wait_for(asyncio.gather(*tasks), 60))
    assert all(not s.done for s in streams)  # every one was cut off
    statuses = await asyncio.gather(*(resume(http, s, stack.urls[0]) for s in streams))
    assert statuses == [200] * len(streams)
    for s, had in zip(streams, before):
        assert s.complete(), (s.errors, len(s.tokens), s.max_tokens, s.finish)
        assert s.tokens[:len(had)] == had
        assert s.ids == sorted(set(s.ids))  # no event twice
    await asyncio.to_thread(stack.restarted, VICTIM, victim)


async def test_streams_nobody_resumes_stop_soon_after_their_gateway_died(http, stack):
    codec = Codec(LogRecord)
    async with reader(stack.kafka, stack.reply_topic, from_start=False, partitions=2) as replies:
        tasks, progress = start_streams(http, stack.model, [3000] * 4, "orphan", url=stack.urls[1])
        await progress.all_have(5)
        killed = await _kill_victim(stack)
        streams = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        rids = {s.request_id.encode() for s in streams}
        finals: dict[bytes, tuple[TokenDelta, float]] = {}

        async def collect() -> None:
            async for record in replies:
                if record.key in rids:
                    msg = codec.decode(record.value)
                    if isinstance(msg, TokenDelta) and msg.finished:
                        finals[record.key] = (msg, record.timestamp / 1000)
                        if len(finals) == len(rids):
                            return

        await asyncio.wait_for(collect(), 90)
    for msg, at in finals.values():
        assert msg.choices[0].finish_reason == "abort"
        assert msg.usage.completion_tokens < 3000
        # The dead gateway renewed each watch for lease + grace; the worker checks every
        # quarter lease.
        assert at - killed <= GRACE_S + LEASE_S + LEASE_S / 4 + 2.0, at - killed
        assert at - killed >= GRACE_S - 0.5, at - killed
