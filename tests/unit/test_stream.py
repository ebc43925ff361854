"""ReplyStream and pump, with fake engine outputs shaped like vLLM's DELTA RequestOutputs."""

import asyncio
from dataclasses import dataclass, field

import pytest

from services.worker.stream import ReplyStream, pump


@dataclass
class Comp:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list | None = None


@dataclass
class Out:
    outputs: list[Comp]
    finished: bool = False
    prompt_token_ids: list[int] = field(default_factory=list)


def test_messages_are_numbered_with_cumulative_counts():
    s = ReplyStream("r", "w1", prompt_tokens=4, n=1)
    s.add(Out([Comp(0, "a", [1])]))
    s.add(Out([Comp(0, "b", [2])]))
    first = s.take()
    assert (first.seq, first.choices[0].text, first.choices[0].token_ids) == (0, "ab", [1, 2])
    assert first.choices[0].num_tokens == 2 and not first.finished and first.usage is None
    s.add(Out([Comp(0, "c", [3], "length")], finished=True))
    last = s.take()
    assert last.seq == 1 and last.finished
    assert last.choices[0].num_tokens == 3 and last.choices[0].finish_reason == "length"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 3)


def test_parallel_choices_are_tracked_separately():
    s = ReplyStream("r", "w1", prompt_tokens=1, n=2)
    s.add(Out([Comp(1, "x", [7])]))
    msg = s.take()
    assert [c.index for c in msg.choices] == [1]
    s.add(Out([Comp(0, "y", [8], "stop"), Comp(1, "z", [9], "length")], finished=True))
    msg = s.take()
    assert [(c.index, c.num_tokens, c.finish_reason) for c in msg.choices] == [(0, 1, "stop"), (1, 2, "length")]
    assert msg.usage.completion_tokens == 3


def test_stream_that_ends_without_a_final_output_is_marked_aborted():
    s = ReplyStream("r", "w1", prompt_tokens=1, n=1)
    s.add(Out([Comp(0, "a", [1])]))
    s.finish()
    msg = s.take()
    assert msg.finished and msg.choices[0].finish_reason == "abort"


async def _outputs(items, gaps):
    for item, gap in zip(items, gaps):
        await asyncio.sleep(gap)
        yield item, None  # (output, choice): one engine request for every choice


async def test_pump_coalesces_tokens_within_the_window_and_loses_none():
    items = [Out([Comp(0, f"t{i}", [i])]) for i in range(10)]
    items.append(Out([Comp(0, "", [], "length")], finished=True))
    sent = []

    async def send(msg):
        sent.append(msg)
        return None

    s = ReplyStream("r", "w", prompt_tokens=1, n=1)
    # Tokens arrive back to back; a 50 ms window must merge them into few messages.
    await pump(_outputs(items, [0] * len(items)), s, send, window_s=0.05)
    assert len(sent) < len(items)
    assert [m.seq for m in sent] == list(range(len(sent)))
    assert "".join(c.text for m in sent for c in m.choices) == "".join(f"t{i}" for i in range(10))
    assert sent[-1].finished and sent[-1].choices[-1].num_tokens == 10


async def test_pump_sends_the_first_token_without_waiting_for_the_window():
    first_sent = asyncio.Event()

    async def send(msg):
        first_sent.set()
        return None

    async def slow():
        yield Out([Comp(0, "a", [1])]), None
        await asyncio.sleep(3600)  # the engine is busy; the first token must already be out
        yield Out([], finished=True), None

    # The window is far longer than the wait: only an immediate first send passes.
    task = asyncio.create_task(pump(slow(), ReplyStream("r", "w", 1, 1), send, window_s=3600))
    await asyncio.wait_for(first_sent.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_engine_error_finish_is_an_error_not_a_stop():
    from shared.errors import InternalError

    s = ReplyStream("r", "w1", prompt_tokens=1, n=1)
    with pytest.raises(InternalError):
        s.add(Out([Comp(0, "a", [1], "error")], finished=True))


async def test_pump_reraises_engine_errors():
    async def broken():
        yield Out([Comp(0, "a", [1])]), None
        raise RuntimeError("engine died")

    async def send(msg):
        return None

    with pytest.raises(RuntimeError, match="engine died"):
        await pump(broken(), ReplyStream("r", "w", 1, 1), send, window_s=0.001)
