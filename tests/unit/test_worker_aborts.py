from services.worker.aborts import RecentIds


def test_recent_ids_forget_the_oldest_past_capacity():
    ids = RecentIds(capacity=3)
    for rid in ("a", "b", "c", "a", "d"):
        ids.add(rid)
    assert "a" in ids and "c" in ids and "d" in ids
    assert "b" not in ids  # "a" was refreshed, so "b" was the oldest
