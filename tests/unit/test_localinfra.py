"""The local Kafka's cluster id: Kafka's format tool reads an id that starts with "-" as
an option, and one random id in 64 did."""

from __future__ import annotations

import base64

from infra.localinfra import _cluster_id


def test_cluster_ids_are_16_random_bytes_never_starting_with_a_dash() -> None:
    ids = [_cluster_id() for _ in range(2000)]  # a dash-first id would appear ~31 times
    assert not any(cid.startswith("-") for cid in ids)
    assert len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(cid + "==")) == 16 for cid in ids)
