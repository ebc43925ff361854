import msgspec
import pytest

from shared.contracts import GenerateRequest, Sampling, StreamOpened, TextPrompt
from shared.errors import ContextLengthExceeded
from shared.settings import ModelSpec

from services.tokenizer.convert import to_tokenized

SPEC = ModelSpec(name="m", path=__import__("pathlib").Path("/tmp"), pool="cpu", max_model_len=100)


def _req(max_tokens):
    return GenerateRequest(request_id="r", model="m", prompt=TextPrompt(text="x"),
                           sampling=Sampling(max_tokens=max_tokens), created=0.0)


def test_max_tokens_defaults_to_the_rest_of_the_context():
    assert to_tokenized(_req(None), list(range(30)), SPEC).sampling.max_tokens == 70


def test_prompt_plus_max_tokens_may_fill_the_context_exactly():
    out = to_tokenized(_req(70), list(range(30)), SPEC)
    assert out.sampling.max_tokens == 70 and out.prompt_token_ids == list(range(30))


def test_prompt_plus_max_tokens_over_the_context_is_rejected():
    with pytest.raises(ContextLengthExceeded) as err:
        to_tokenized(_req(71), list(range(30)), SPEC)
    assert err.value.status == 400 and err.value.param == "max_tokens"


def test_prompt_filling_the_context_is_rejected():
    with pytest.raises(ContextLengthExceeded) as err:
        to_tokenized(_req(None), list(range(100)), SPEC)
    assert err.value.param == "messages"


def test_the_stream_header_and_watch_travel_on_to_the_worker():
    opened = StreamOpened(request_id="r", gateway="gw-0", endpoint="chat", model="m", created=0.0,
                          n=1, include_usage=True, owner="k")
    req = msgspec.structs.replace(_req(5), opened=opened, grace_s=15.0)
    tokenized = to_tokenized(req, [1, 2], SPEC)
    assert tokenized.opened == opened and tokenized.grace_s == 15.0
