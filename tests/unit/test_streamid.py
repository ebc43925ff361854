"""Request ids carry their reply partition and creation time, so any gateway finds a stream."""

import pytest

from shared.streamid import new_request_id, parse_request_id, parse_response_id


def test_an_id_says_where_and_when_its_stream_is():
    rid = new_request_id(13, 1_800_000_000.123)
    key = parse_request_id(rid)
    assert key is not None and len(rid) == 32
    assert (key.request_id, key.partition, key.created_ms) == (rid, 13, 1_800_000_000_123)
    assert parse_response_id(f"chatcmpl-{rid}") == key == parse_response_id(f"cmpl-{rid}")


def test_ids_are_unique():
    assert len({new_request_id(0, 1.0) for _ in range(1000)}) == 1000


@pytest.mark.parametrize("text", ["", "chatcmpl-", "chatcmpl-xyz", "cmpl-" + "g" * 32,
                                  "resp-" + "0" * 32, "chatcmpl-" + "0" * 31, "chatcmpl-" + "A" * 32,
                                  "chatcmpl-" + "0" * 33])
def test_anything_else_is_no_stream(text):
    assert parse_response_id(text) is None


def test_partitions_beyond_the_id_format_are_refused():
    with pytest.raises(ValueError):
        new_request_id(4096, 1.0)
