import msgspec
import pytest

from shared.contracts import (
    ChatMessage,
    ChatPrompt,
    ChoiceDelta,
    Codec,
    DecodeErrors,
    ErrorInfo,
    ErrorReply,
    GenerateRequest,
    Reply,
    Sampling,
    StreamOpened,
    TextPrompt,
    TokenDelta,
    UnsupportedVersion,
)


def _request(prompt) -> GenerateRequest:
    return GenerateRequest(request_id="r1", model="m", prompt=prompt,
                           sampling=Sampling(max_tokens=5, stop=["x"]), created=1.5)


@pytest.mark.parametrize("prompt", [
    ChatPrompt(messages=[ChatMessage(role="user", content="hi")]),
    TextPrompt(text="hello"),
])
def test_generate_request_round_trips(prompt):
    codec = Codec(GenerateRequest)
    msg = _request(prompt)
    data = codec.encode(msg)
    assert b'"type":"generate_request"' in data and b'"v":1' in data
    assert codec.decode(data) == msg


def test_a_streamed_request_carries_its_header():
    opened = StreamOpened(request_id="r1", gateway="gw-0", endpoint="completions", model="m",
                          created=1.5, n=2, include_usage=False, owner="ab", deadline=9.0)
    codec = Codec(GenerateRequest)
    msg = msgspec.structs.replace(_request(TextPrompt(text="hi")), opened=opened)
    assert codec.decode(codec.encode(msg)).opened == opened


def test_reply_union_decodes_by_tag():
    codec = Codec(Reply)
    delta = TokenDelta(request_id="r", source="w", seq=0, choices=[
        ChoiceDelta(index=0, text="a", token_ids=[1], num_tokens=1)])
    err = ErrorReply(request_id="r", source="t", seq=0,
                     error=ErrorInfo(status=400, type="invalid_request_error", message="bad"))
    assert codec.decode(codec.encode(delta)) == delta
    assert codec.decode(codec.encode(err)) == err


def test_unknown_fields_are_ignored_for_forward_compatibility():
    codec = Codec(GenerateRequest)
    raw = msgspec.json.decode(codec.encode(_request(TextPrompt(text="x"))))
    raw["added_later"] = {"anything": 1}
    assert codec.decode(msgspec.json.encode(raw)).request_id == "r1"


def test_newer_schema_version_is_rejected():
    codec = Codec(GenerateRequest)
    raw = msgspec.json.decode(codec.encode(_request(TextPrompt(text="x"))))
    raw["v"] = 2
    with pytest.raises(UnsupportedVersion):
        codec.decode(msgspec.json.encode(raw))


@pytest.mark.parametrize("data", [
    b"not json",
    b'{"type":"generate_request","v":1}',  # missing fields
    b'{"type":"token_delta","v":1,"request_id":"r","source":"w","seq":0,"choices":[]}',  # wrong type
    b'{"type":"generate_request","v":1,"request_id":5,"model":"m","created":1,'
    b'"prompt":{"kind":"text","text":"x"},"sampling":{}}',  # wrong field type
])
def test_invalid_envelopes_raise_decode_errors(data):
    with pytest.raises(DecodeErrors):
        Codec(GenerateRequest).decode(data)


def test_tombstone_is_a_decode_error():
    with pytest.raises(DecodeErrors):
        Codec(GenerateRequest).decode(None)


def test_meta_ignores_null_headers_and_requires_a_request_id():
    from shared.bus import Meta

    meta = Meta.from_headers([("sluice-request-id", b"r1"), ("traceparent", None)])
    assert meta.request_id == "r1" and meta.traceparent is None
    with pytest.raises(ValueError):
        Meta.from_headers([("sluice-request-id", None)])
