"""A taken-over request continues each unfinished choice from its stored tokens."""

from shared.contracts import Sampling, TokenizedRequest

from services.worker.continuation import continued, fresh
from services.worker.stream import ReplyStream


def request(**sampling) -> TokenizedRequest:
    return TokenizedRequest(request_id="r", model="m", prompt_token_ids=[1, 2, 3], created=0.0,
                            sampling=Sampling(**{"max_tokens": 10, **sampling}))


def test_a_fresh_request_is_one_engine_request_for_all_choices():
    plan = fresh(request(n=2))
    assert [(r.engine_id, r.choice, r.prefix, r.sampling.n) for r in plan.requests] == [("r", None, [], 2)]


def test_each_unfinished_choice_continues_from_its_own_tokens():
    req = request(n=3, min_tokens=4, seed=7)
    plan = continued(req, epoch=2, stored={0: [5, 6], 1: [7] * 10, 2: [8]}, unfinished=[0, 1, 2])
    assert plan.complete == [1]  # its budget is spent: it ends with "length"
    got = [(r.engine_id, r.choice, r.prefix, r.sampling.n, r.sampling.max_tokens,
            r.sampling.min_tokens, r.sampling.seed) for r in plan.requests]
    # Seeds as vLLM gives parallel choices: seed + index.
    assert got == [("r.2.0", 0, [5, 6], 1, 8, 2, 7), ("r.2.2", 2, [8], 1, 9, 3, 9)]


def test_a_single_choice_keeps_its_seed():
    plan = continued(request(seed=7), epoch=1, stored={0: [5]}, unfinished=[0])
    assert plan.requests[0].sampling.seed == 7


def test_a_resumed_stream_numbers_on_and_counts_every_token():
    s = ReplyStream("r", "w2", prompt_tokens=3, n=2, epoch=1)
    s.resume(seq=4, done={0: (2, None), 1: (5, "stop")})
    assert s.unfinished() == [0] and not s.finished

    class Out:
        outputs = [type("C", (), {"index": 0, "text": "x", "token_ids": [9], "finish_reason": "length",
                                  "logprobs": None})()]
        finished = True

    s.add(Out(), choice=0)
    msg = s.take()
    assert (msg.seq, msg.epoch, msg.finished) == (4, 1, True)
    assert [(c.index, c.num_tokens) for c in msg.choices] == [(0, 3)]  # choice 1 is not sent again
    assert msg.usage.completion_tokens == 8 and msg.usage.prompt_tokens == 3
