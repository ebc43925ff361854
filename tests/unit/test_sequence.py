"""ReplySequencer: a takeover is accepted only where the stream stands."""

from shared.contracts import ChoiceDelta, ErrorInfo, ErrorReply, TokenDelta
from shared.replylog import StreamProgress
from shared.sequence import ReplySequencer, Verdict


def delta(seq, tokens, *, start, source="w1", epoch=0, index=0, finished=False):
    return TokenDelta(request_id="r", source=source, seq=seq, epoch=epoch, finished=finished, choices=[
        ChoiceDelta(index=index, text="".join(f"<{t}>" for t in tokens), token_ids=tokens,
                    num_tokens=start + len(tokens), finish_reason="length" if finished else None)])


def fed(*msgs) -> ReplySequencer:
    s = ReplySequencer()
    for m in msgs:
        assert s.offer(m) is Verdict.ACCEPT
    return s


def test_one_source_in_order():
    s = fed(delta(0, [1, 2], start=0), delta(1, [3], start=2))
    assert (s.next_seq, s.positions, s.epoch) == (2, {0: 3}, 0)
    assert s.check(delta(1, [3], start=2)) is Verdict.DUPLICATE  # resent
    assert s.check(delta(3, [5], start=4)) is Verdict.GAP


def test_the_first_message_must_be_the_first():
    assert ReplySequencer().check(delta(1, [1], start=1)) is Verdict.GAP


def test_a_second_run_under_the_same_epoch_is_a_duplicate():
    s = fed(delta(0, [1], start=0))
    assert s.check(delta(1, [9], start=1, source="w2")) is Verdict.DUPLICATE


def test_a_takeover_continues_exactly_where_the_stream_stands():
    s = fed(delta(0, [1, 2], start=0), delta(1, [3], start=2))
    takeover = delta(2, [4, 5], start=3, source="w2", epoch=1)
    assert s.offer(takeover) is Verdict.ACCEPT
    assert (s.source, s.epoch, s.next_seq, s.positions[0]) == ("w2", 1, 3, 5)
    # The old owner's late messages are stale now.
    assert s.check(delta(2, [4], start=3)) is Verdict.STALE


def test_a_takeover_out_of_place_is_refused():
    s = fed(delta(0, [1, 2], start=0), delta(1, [3], start=2))
    # Started behind what was delivered: it would repeat tokens.
    assert s.check(delta(1, [3], start=2, source="w2", epoch=1)) is Verdict.DIVERGED
    # At the right seq but the wrong token position.
    assert s.check(delta(2, [4], start=2, source="w2", epoch=1)) is Verdict.DIVERGED
    # Ahead of the stream: messages are missing.
    assert s.check(delta(3, [4], start=3, source="w2", epoch=1)) is Verdict.GAP


def test_a_takeover_before_any_reply_starts_the_stream():
    assert ReplySequencer().check(delta(0, [1], start=0, source="w2", epoch=1)) is Verdict.ACCEPT


def test_progress_replays_the_log_as_a_reader_sees_it():
    p = StreamProgress("r")
    for msg in [delta(0, [1, 2], start=0), delta(0, [1, 2], start=0),  # a resent copy
                delta(0, [7], start=0, source="w9"),  # a second run: ignored
                delta(1, [3], start=2),
                delta(2, [4], start=3, source="w2", epoch=1),
                delta(2, [8], start=3)]:  # the old owner after the takeover: stale
        p.add(msg)
    assert p.choices[0].token_ids == [1, 2, 3, 4]
    assert (p.next_seq, p.epoch, p.finished, p.diverged) == (3, 1, False, False)
    p.add(delta(3, [5], start=4, source="w2", epoch=1, finished=True))
    assert p.finished and p.choices[0].finish_reason == "length"


def test_progress_ends_at_an_error_reply():
    p = StreamProgress("r")
    p.add(delta(0, [1], start=0))
    p.add(ErrorReply(request_id="r", source="w1", seq=1, error=ErrorInfo(
        status=504, type="timeout", message="deadline")))
    assert p.finished and p.choices[0].token_ids == [1]
