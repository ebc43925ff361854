from pathlib import Path

import orjson
import pytest

from shared.contracts import ChatPrompt, ImageUrlPart, PartsChatPrompt, TextPrompt, needs_preprocess
from shared.contracts import TextPart as WireText
from shared.errors import InvalidRequest
from shared.settings import ModelSpec
from shared.vision import VisionSpec

from services.gateway import api
from services.gateway.api import ChatCompletionRequest, CompletionRequest, parse

TEXT_MODEL = ModelSpec(name="m", path=Path("/m"), pool="cpu", max_model_len=1024)


def chat_to_generate(req, rid, created, max_n, spec=TEXT_MODEL, max_images=8):
    return api.chat_to_generate(req, rid, created, max_n, spec, max_images)


def completion_to_generate(req, rid, created, max_n, spec=TEXT_MODEL, max_images=8):
    return api.completion_to_generate(req, rid, created, max_n, spec, max_images)


def chat(**fields):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse(ChatCompletionRequest, orjson.dumps(body))


def test_chat_request_maps_to_the_wire_request():
    req = chat(temperature=0, top_p=0.5, top_k=5, max_tokens=7, stop="END", seed=3,
               presence_penalty=0.1, frequency_penalty=0.2, n=2, stream=True,
               stream_options={"include_usage": True})
    assert req.include_usage
    wire = chat_to_generate(req, "rid", 1.0, max_n=4)
    s = wire.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.stop, s.seed, s.n) == (0, 0.5, 5, 7, ["END"], 3, 2)
    assert (s.presence_penalty, s.frequency_penalty, s.logprobs) == (0.1, 0.2, None)
    assert isinstance(wire.prompt, ChatPrompt) and wire.prompt.messages[0].content == "hi"


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat_to_generate(chat(max_tokens=5, max_completion_tokens=9), "r", 0, 4).sampling.max_tokens == 9


def test_text_parts_are_joined_and_developer_is_system():
    req = chat(messages=[{"role": "developer", "content": "rules"},
                         {"role": "user", "content": [{"type": "text", "text": "a"},
                                                      {"type": "text", "text": "b"}]}])
    msgs = chat_to_generate(req, "r", 0, 4).prompt.messages
    assert [(m.role, m.content) for m in msgs] == [("system", "rules"), ("user", "a\nb")]


def test_logprobs_map_to_top_count():
    assert chat_to_generate(chat(logprobs=True, top_logprobs=3), "r", 0, 4).sampling.logprobs == 3
    assert chat_to_generate(chat(logprobs=True), "r", 0, 4).sampling.logprobs == 0


@pytest.mark.parametrize("fields, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"n": "2"}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": 5}, "model"),
])
def test_bad_fields_are_400_with_the_parameter_named(fields, param):
    with pytest.raises(InvalidRequest) as err:
        chat(**fields)
    assert err.value.status == 400 and err.value.param == param


@pytest.mark.parametrize("fields, param", [
    ({"n": 9}, "n"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages.0.content.0"),
    ({"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
])
def test_unsupported_combinations_are_400(fields, param):
    with pytest.raises(InvalidRequest) as err:
        chat_to_generate(chat(**fields), "r", 0, max_n=8)
    assert err.value.param == param


def test_malformed_json_is_400():
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse(ChatCompletionRequest, b"{nope")


def test_completion_prompt_forms():
    req = parse(CompletionRequest, b'{"model":"m","prompt":["one"],"logprobs":2}')
    wire = completion_to_generate(req, "r", 0, 4)
    assert isinstance(wire.prompt, TextPrompt) and wire.prompt.text == "one"
    assert wire.sampling.logprobs == 2
    with pytest.raises(InvalidRequest):
        completion_to_generate(parse(CompletionRequest, b'{"model":"m","prompt":["a","b"]}'), "r", 0, 4)
    with pytest.raises(InvalidRequest):
        completion_to_generate(parse(CompletionRequest, b'{"model":"m","prompt":""}'), "r", 0, 4)


def test_null_means_default():
    req = chat(n=None, stream=None, logprobs=None, min_tokens=None, ignore_eos=None, top_p=None)
    wire = chat_to_generate(req, "r", 0, 4)
    assert wire.sampling.n == 1 and wire.sampling.min_tokens == 0 and not req.streaming


def test_top_p_zero_means_the_most_likely_token():
    s = chat_to_generate(chat(top_p=0), "r", 0, 4).sampling
    assert (s.top_p, s.top_k) == (1.0, 1)


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
])
def test_unsupported_features_are_refused_not_ignored(fields, param):
    with pytest.raises(InvalidRequest) as err:
        chat_to_generate(chat(**fields), "r", 0, 4)
    assert err.value.param == param


def test_harmless_forms_of_unsupported_features_pass():
    chat_to_generate(chat(response_format={"type": "text"}, tools=[], logit_bias={}), "r", 0, 4)


VISION_MODEL = ModelSpec(name="v", path=Path("/v"), pool="cpu", max_model_len=1024,
                         vision=VisionSpec(image_token_id=5, patch_size=8, merge_size=2,
                                           min_pixels=1024, max_pixels=65536))
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}


def test_vision_model_gets_parts_in_order():
    req = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE]}])
    prompt = chat_to_generate(req, "r", 0, 4, spec=VISION_MODEL).prompt
    assert isinstance(prompt, PartsChatPrompt)
    assert prompt.messages[0].parts == [WireText(text="a"),
                                        ImageUrlPart(url="data:image/png;base64,AAAA", detail="low")]
    assert needs_preprocess(prompt)


def test_text_parts_on_a_vision_model_skip_preprocess():
    req = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}])
    assert not needs_preprocess(chat_to_generate(req, "r", 0, 4, spec=VISION_MODEL).prompt)
    assert isinstance(chat_to_generate(chat(), "r", 0, 4, spec=VISION_MODEL).prompt, ChatPrompt)


@pytest.mark.parametrize("messages, spec, param, words", [
    ([{"role": "user", "content": [IMAGE]}], TEXT_MODEL, "messages.0.content.0", "does not accept"),
    ([{"role": "system", "content": [IMAGE]}], VISION_MODEL, "messages.0.content.0", "user messages"),
    ([{"role": "user", "content": [IMAGE] * 3}], VISION_MODEL, "messages", "at most 2 images"),
])
def test_image_refusals_name_the_part(messages, spec, param, words):
    with pytest.raises(InvalidRequest, match=words) as info:
        chat_to_generate(chat(messages=messages), "r", 0, 4, spec=spec, max_images=2)
    assert info.value.param == param
