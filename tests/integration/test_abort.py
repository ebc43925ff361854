"""A client that disconnects mid-stream stops its generation, after the resume grace window
(nobody resumed it) or at once on a gateway without one. Observed as the worker's final
`abort` delta in the reply log (an event, stamped by the broker), then its metrics."""

import time

import orjson
import pytest

from infra.procs import detail
from shared.contracts import Codec, LogRecord, TokenDelta

from tests.integration.conftest import GRACE_S, LEASE_S
from tests.integration.helpers import metric, reader, wait_for_record

pytestmark = pytest.mark.stack

CODEC = Codec(LogRecord)


async def _disconnect_then_final(http, stack, url: str = "", partitions: int = 1):
    """Start a long stream, let go after its first token; (the final delta of the request,
    when the client let go, in unix seconds)."""
    body = orjson.dumps({"model": stack.model, "prompt": "Once upon a time", "max_tokens": 3000,
                         "ignore_eos": True, "stream": True})
    async with reader(stack.kafka, stack.reply_topic, from_start=False, partitions=partitions) as replies:
        resp = await http.post(f"{url}/v1/completions", data=body,
                               headers={"Content-Type": "application/json"})
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
        await resp.content.readuntil(b"\n\n")  # the first token arrived: generation is under way
        resp.close()  # disconnect mid-stream
        left = time.time()

        def final_for_request(record) -> bool:
            if record.key != rid.encode():
                return False
            msg = CODEC.decode(record.value)
            return isinstance(msg, TokenDelta) and msg.finished

        record = await wait_for_record(replies, final_for_request, timeout=60)
    return CODEC.decode(record.value), record.timestamp / 1000 - left


async def test_a_disconnect_nobody_resumes_stops_the_generation_after_the_grace_window(http, stack):
    abandoned = await metric(http, stack.worker_metrics, "sluice_worker_abandoned_total")
    final, after_s = await _disconnect_then_final(http, stack)
    assert final.choices[-1].finish_reason == "abort"
    assert final.usage.completion_tokens < 3000  # stopped early, not run to the end
    # Not before the grace window (a resume could have come), and soon after it: the worker
    # checks its watches with every lease renewal.
    assert GRACE_S - 0.5 <= after_s <= GRACE_S + LEASE_S / 4 + 2.0, after_s
    assert await metric(http, stack.worker_metrics, "sluice_worker_abandoned_total") == abandoned + 1


async def test_without_a_grace_window_a_disconnect_aborts_at_once(http, stack):
    gateway = stack.start("gateway-nograce", "services.gateway", GATEWAY_RESUME_GRACE_S="0",
                          GATEWAY_ID="itest-2", GATEWAY_PORT="0")
    try:
        url = detail(gateway.ready_detail, "url")
        aborts = await metric(http, stack.worker_metrics, "sluice_worker_aborts_total")
        final, after_s = await _disconnect_then_final(http, stack, url, partitions=3)
        assert final.choices[-1].finish_reason == "abort"
        assert after_s < 3.0, after_s
        assert await metric(http, stack.worker_metrics, "sluice_worker_aborts_total") == aborts + 1
        async with http.get(f"{url}/metrics") as m:
            assert "sluice_gateway_aborts_published_total 1.0" in await m.text()
    finally:
        gateway.stop()
