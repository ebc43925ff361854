"""A message that is not a valid envelope, on any topic, is logged and set aside on the
dead-letter topic; the consumer carries on."""

import uuid

import pytest

from tests.integration.helpers import producer, reader, wait_for_record

pytestmark = pytest.mark.stack


def bad_messages(marker: str) -> list[tuple[bytes, list]]:
    h = [("sluice-request-id", marker.encode())]
    return [
        (f"not json {marker}".encode(), h),
        (b'{"type":"generate_request","v":1,"marker":"' + marker.encode() + b'"}', h),  # fields missing
        (b'{"type":"generate_request","v":99,"request_id":"' + marker.encode() + b'"}', h),  # future version
        (b'{"type":"tokenized_request","v":1,"request_id":"' + marker.encode() + b'"}', []),  # no headers
        (None, h),  # a tombstone: no value at all
        (b"{}", [("sluice-request-id", None), ("x-marker", marker.encode())]),  # a null header
    ]


@pytest.mark.parametrize("topic_of", [
    lambda s: "sluice.requests",
    lambda s: "sluice.preprocess",
    lambda s: f"sluice.infer.cpu.{s.model}",
    lambda s: f"sluice.infer.cpu.{s.vl_model}",
    lambda s: "sluice.aborts",
    lambda s: s.reply_topic,
], ids=["requests", "preprocess", "infer.text", "infer.vision", "aborts", "replies"])
async def test_invalid_messages_are_dead_lettered_and_consumers_survive(stack, client, topic_of):
    topic = topic_of(stack)
    marker = uuid.uuid4().hex
    async with reader(stack.kafka, "sluice.deadletter", from_start=False) as dlq:
        async with producer(stack.kafka) as p:
            for value, headers in bad_messages(marker):
                # On the reply topic: a partition a gateway reads (the first gateway's).
                partition = 0 if topic == stack.reply_topic else None
                await p.send_and_wait(topic, value, key=marker.encode(), headers=headers,
                                      partition=partition)
        seen = []
        for _ in bad_messages(marker):
            record = await wait_for_record(
                dlq, lambda r: r.key == marker.encode() and r.offset not in [s.offset for s in seen])
            seen.append(record)
    for record in seen:
        headers = dict(record.headers)
        assert headers["sluice-origin"].decode().startswith(f"{topic}:")
        assert headers["sluice-error"]
    # Every consumer is still at work.
    resp = await client.chat.completions.create(model=stack.model, max_tokens=3,
                                                messages=[{"role": "user", "content": "alive?"}])
    assert resp.usage.completion_tokens >= 1
