from shared.offsets import PartitionOffsets


def test_commits_only_below_the_oldest_unfinished_message():
    p = PartitionOffsets()
    for off in (10, 11, 12):
        p.start(off)
    assert p.committable() == 10  # nothing finished: resume at 10
    p.finish(12)
    assert p.committable() == 10  # 10 and 11 still running
    p.finish(10)
    assert p.committable() == 11
    p.mark_committed(11)
    assert p.committable() is None
    p.finish(11)
    assert p.committable() == 13
    assert p.in_flight == 0


def test_nothing_to_commit_before_any_message():
    assert PartitionOffsets().committable() is None


def test_committed_offset_never_moves_backwards():
    p = PartitionOffsets()
    p.start(5)
    p.finish(5)
    p.mark_committed(6)
    p.mark_committed(3)
    assert p.committable() is None
    p.start(6)
    assert p.committable() is None  # 6 is in flight and already the committed position
    p.finish(6)
    assert p.committable() == 7
