import asyncio

import pytest

from aiokafka.errors import KafkaConnectionError

from shared.contracts import (ChoiceDelta, Codec, ErrorInfo, ErrorReply, LogRecord, StreamOpened,
                              TokenDelta)
from shared.errors import InternalError, RemoteError, UpstreamTimeout

from services.gateway.metrics import GatewayMetrics
from services.gateway.replies import Collector, ReplyRouter


def delta(seq, text, finished=False, source="w1"):
    return TokenDelta(request_id="r", source=source, seq=seq, finished=finished, choices=[
        ChoiceDelta(index=0, text=text, token_ids=[seq], num_tokens=seq + 1,
                    finish_reason="stop" if finished else None)])


async def drain(c: Collector, timeout=1.0):
    out = []
    async for batch in c.batches(timeout):
        out.append([d.choices[0].text for d in batch])
    return out


async def test_batches_hold_everything_that_arrived():
    c = Collector(GatewayMetrics())
    c.deliver(delta(0, "a"))
    c.deliver(delta(1, "b"))
    c.deliver(delta(2, "c", finished=True))
    assert await drain(c) == [["a", "b", "c"]]


async def test_duplicates_and_other_sources_are_dropped():
    m = GatewayMetrics()
    c = Collector(m)
    c.deliver(delta(0, "a"))
    c.deliver(delta(0, "a"))  # resent
    c.deliver(delta(0, "X", source="w2"))  # a redelivered copy on another worker
    c.deliver(delta(1, "b", finished=True))
    assert await drain(c) == [["a", "b"]]
    assert m.duplicates._value.get() == 2


async def test_a_gap_fails_the_stream_after_what_arrived_in_order():
    m = GatewayMetrics()
    c = Collector(m)
    c.deliver(delta(0, "a"))
    c.deliver(delta(2, "c"))
    batches = c.batches(1.0)
    assert [d.choices[0].text for d in await anext(batches)] == ["a"]
    with pytest.raises(InternalError, match="1 reply message"):
        await anext(batches)
    assert m.gaps._value.get() == 1


async def test_error_reply_is_raised_with_its_status():
    c = Collector(GatewayMetrics())
    c.deliver(ErrorReply(request_id="r", source="t", seq=0,
                         error=ErrorInfo(status=400, type="invalid_request_error", message="too long")))
    with pytest.raises(RemoteError) as err:
        await drain(c)
    assert err.value.status == 400 and err.value.message == "too long"
    assert c.error_seq == 0  # a stored error's event takes its message number


async def test_an_error_the_gateway_makes_has_no_message_number():
    """It is not in the log: an id for it would be one a later stored event takes, and a
    client resuming after it would skip that event."""
    c = Collector(GatewayMetrics())
    c.deliver(delta(0, "a"))
    c.fail(UpstreamTimeout("silence"))
    assert c.error_seq is None


async def test_silence_times_out():
    c = Collector(GatewayMetrics())
    with pytest.raises(UpstreamTimeout):
        await drain(c, timeout=0.01)


async def test_reader_wakes_when_a_delta_arrives():
    c = Collector(GatewayMetrics())
    reader = asyncio.create_task(drain(c))
    await asyncio.sleep(0)  # let the reader block on the empty collector
    c.deliver(delta(0, "a", finished=True))
    assert await asyncio.wait_for(reader, 1) == [["a"]]


def taken_over(seq, text, epoch=1, source="w2", finished=False, start=None):
    start = seq if start is None else start
    return TokenDelta(request_id="r", source=source, seq=seq, epoch=epoch, finished=finished, choices=[
        ChoiceDelta(index=0, text=text, token_ids=[seq], num_tokens=start + 1,
                    finish_reason="stop" if finished else None)])


async def test_a_takeover_continues_the_stream_where_it_stands():
    m = GatewayMetrics()
    c = Collector(m)
    c.deliver(delta(0, "a"))
    c.deliver(delta(1, "b"))
    c.deliver(taken_over(2, "c"))  # another worker took the request over
    c.deliver(delta(2, "X"))  # the old owner, late: stale
    c.deliver(taken_over(3, "d", finished=True))
    assert await drain(c) == [["a", "b", "c", "d"]]
    assert m.takeovers._value.get() == 1 and m.duplicates._value.get() == 1


async def test_a_takeover_out_of_place_fails_the_stream_rather_than_repeat_tokens():
    m = GatewayMetrics()
    c = Collector(m)
    c.deliver(delta(0, "a"))
    c.deliver(delta(1, "b"))
    c.deliver(taken_over(1, "B"))  # starts behind what the client has
    batches = c.batches(1.0)
    assert [d.choices[0].text for d in await anext(batches)] == ["a", "b"]
    with pytest.raises(InternalError, match="disagree"):
        await anext(batches)


class _Record:
    def __init__(self, offset, msg):
        self.topic, self.partition, self.offset = "sluice.replies", 0, offset
        self.key = msg.request_id.encode()
        self.value = Codec(LogRecord).encode(msg)
        self.headers = ()


class _FlakyConsumer:
    """Fails its first polls, as while the cluster is unreachable, then serves records."""

    def __init__(self, records, failures):
        self.records, self.failures = list(records), failures

    async def getmany(self, timeout_ms=0):
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("unreachable")
        if self.records:
            batch, self.records = self.records, []
            return {"tp": batch}
        await asyncio.sleep(timeout_ms / 1000)
        return {}


async def test_the_reply_router_outlives_kafka_errors_and_skips_stream_headers(monkeypatch):
    monkeypatch.setattr("services.gateway.replies.RETRY_S", (0.01, 0.02))
    header = StreamOpened(request_id="r", gateway="g", endpoint="chat", model="m", created=1.0,
                          n=1, include_usage=False)
    consumer = _FlakyConsumer([_Record(0, header), _Record(1, delta(0, "a", finished=True))], 3)
    router = ReplyRouter(consumer, None, "dlq", GatewayMetrics())
    collector = router.open("r")
    task = asyncio.create_task(router.run())
    try:
        assert await asyncio.wait_for(drain(collector), 5) == [["a"]]
        assert router.failure is None and consumer.failures == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
