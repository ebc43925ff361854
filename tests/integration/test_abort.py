"""A client that disconnects mid-stream makes the worker abort the request. Observed as the
worker's final `abort` delta on the gateway's reply topic (an event), then its metric."""

import msgspec
import orjson
import pytest

from shared.contracts import Codec, Reply, TokenDelta

from tests.integration.helpers import metric, reader, wait_for_record

pytestmark = pytest.mark.stack


async def test_disconnect_aborts_the_request_in_the_engine(http, stack):
    aborts_before = await metric(http, stack.worker_metrics, "sluice_worker_aborts_total")
    codec = Codec(Reply)
    body = orjson.dumps({"model": stack.model, "prompt": "Once upon a time", "max_tokens": 3000,
                         "ignore_eos": True, "stream": True})
    async with reader(stack.kafka, stack.reply_topic, from_start=False) as replies:
        resp = await http.post("/v1/completions", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
        await resp.content.readuntil(b"\n\n")  # the first token arrived: generation is under way
        resp.close()  # disconnect mid-stream

        def final_for_request(record) -> bool:
            try:
                msg = codec.decode(record.value)
            except msgspec.DecodeError:
                return False
            return isinstance(msg, TokenDelta) and msg.request_id == rid and msg.finished

        record = await wait_for_record(replies, final_for_request, timeout=60)
    final = codec.decode(record.value)
    assert final.choices[-1].finish_reason == "abort"
    assert final.usage.completion_tokens < 3000  # stopped early, not run to the end
    assert await metric(http, stack.worker_metrics, "sluice_worker_aborts_total") == aborts_before + 1
    async with http.get("/metrics") as m:
        assert "sluice_gateway_aborts_published_total" in await m.text()
