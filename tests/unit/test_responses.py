import orjson

from shared.contracts import ChoiceDelta, TokenDelta, TokenLogprob, Usage

from services.gateway.responses import Formatter, error_event


def parsed(raw: bytes) -> list[tuple[int | None, object]]:
    """(id, payload) of each SSE event."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        event_id = None
        if block.startswith("id: "):
            head, block = block.split("\n", 1)
            event_id = int(head[len("id: "):])
        assert block.startswith("data: ")
        payload = block[len("data: "):]
        out.append((event_id, payload if payload == "[DONE]" else orjson.loads(payload)))
    return out


def events(raw: bytes) -> list:
    return [payload for _, payload in parsed(raw)]


def deltas():
    lp = [TokenLogprob(token_id=5, token="he", logprob=-0.5, top=[("he", -0.5), ("x", -1.0)])]
    yield TokenDelta(request_id="r", source="w", seq=0, choices=[
        ChoiceDelta(index=0, text="he", token_ids=[5], num_tokens=1, logprobs=lp)])
    yield TokenDelta(request_id="r", source="w", seq=1, finished=True,
                     usage=Usage(prompt_tokens=3, completion_tokens=2), choices=[
        ChoiceDelta(index=0, text="llo", token_ids=[6], num_tokens=2, finish_reason="length")])


def test_chat_stream_chunks_follow_openai_format():
    f = Formatter(True, "r", "m", 10, n=1, include_usage=True)
    raw = b"".join(f.chunks(d) for d in deltas()) + f.tail()
    ev = events(raw)
    assert ev[-1] == "[DONE]"
    first, second, usage = ev[0], ev[1], ev[2]
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-r"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert first["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"] == "x"
    assert first["usage"] is None
    assert second["choices"][0]["delta"] == {"content": "llo"}
    assert second["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_completion_response_collects_text_and_usage():
    f = Formatter(False, "r", "m", 10, n=1, include_usage=False)
    for d in deltas():
        f.add(d)
    body = f.response()
    assert body["object"] == "text_completion" and body["id"] == "cmpl-r"
    choice = body["choices"][0]
    assert choice["text"] == "hello" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["he"] and choice["logprobs"]["text_offset"] == [0]
    assert body["usage"]["total_tokens"] == 5


def test_stream_without_usage_has_no_usage_chunk():
    f = Formatter(False, "r", "m", 10, n=1, include_usage=False)
    raw = b"".join(f.chunks(d) for d in deltas()) + f.tail()
    ev = events(raw)
    assert len(ev) == 3 and ev[-1] == "[DONE]" and "usage" not in ev[0]


def test_every_event_has_an_id_that_follows_the_stream():
    f = Formatter(True, "r", "m", 10, n=1, include_usage=True)
    raw = b"".join(f.chunks(d) for d in deltas()) + f.tail()
    assert [event_id for event_id, _ in parsed(raw)] == [0, 1, 2, 3]  # deltas, usage, [DONE]


def test_a_tail_after_the_usage_event_is_only_the_terminator():
    f = Formatter(True, "r", "m", 10, n=1, include_usage=True)
    for d in deltas():
        f.chunks(d)
    assert parsed(f.tail(after=1)) == [(2, {"id": "chatcmpl-r", "object": "chat.completion.chunk",
                                           "created": 10, "model": "m", "choices": [],
                                           "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                     "total_tokens": 5}}), (3, "[DONE]")]
    assert parsed(f.tail(after=2)) == [(3, "[DONE]")]
    assert parsed(f.tail(after=7)) == [(3, "[DONE]")]


def test_an_error_event_takes_its_id_and_is_left_out_when_the_client_had_it():
    body = {"error": {"message": "x"}}
    assert parsed(error_event(body, 5)) == [(5, body), (6, "[DONE]")]
    assert parsed(error_event(body, 5, after=5)) == [(6, "[DONE]")]
    # An error the gateway made (not in the log): no id on it or on its [DONE].
    assert parsed(error_event(body, None, after=4)) == [(None, body), (None, "[DONE]")]


def test_without_event_ids_events_are_plain_data_lines():
    f = Formatter(True, "r", "m", 10, n=1, include_usage=True, event_ids=False)
    raw = b"".join(f.chunks(d) for d in deltas()) + f.tail()
    assert [event_id for event_id, _ in parsed(raw)] == [None] * 4
    assert all(block.startswith(b"data: ") for block in raw.split(b"\n\n") if block)
