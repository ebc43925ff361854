"""PromptEncoder on a tokenizer trained here, in a temporary folder."""

import pytest

from infra.models.bpe import train_bpe, wrap
from infra.models.tiny_dsv3 import CHAT_TEMPLATE, SPECIAL
from shared.contracts import ChatMessage, ChatPrompt, TextPrompt
from shared.errors import InvalidRequest

from services.tokenizer.prompts import PromptEncoder


def _folder(tmp_path, template=CHAT_TEMPLATE):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    tok = wrap(train_bpe(300, SPECIAL, [str(corpus)]), bos="<|bos|>", eos="<|eos|>", pad="<|pad|>",
               chat_template=template, model_max_length=512)
    out = tmp_path / "tok"
    tok.save_pretrained(out)
    return out


def test_chat_prompt_is_rendered_with_the_template_and_bos_once(tmp_path):
    enc = PromptEncoder(_folder(tmp_path))
    ids = enc.encode(ChatPrompt(messages=[ChatMessage(role="system", content="be brief"),
                                          ChatMessage(role="user", content="the fox")]))
    assert ids[0] == 0 and ids.count(0) == 1  # <|bos|> from the template, not added again
    assert enc._tok.decode(ids) == "<|bos|><|system|>be brief<|user|>the fox<|assistant|>"


def test_text_prompt_is_plain_tokens(tmp_path):
    enc = PromptEncoder(_folder(tmp_path))
    ids = enc.encode(TextPrompt(text="the lazy dog"))
    assert enc._tok.decode(ids) == "the lazy dog"


def test_template_errors_are_400(tmp_path):
    enc = PromptEncoder(_folder(tmp_path, "{{ raise_exception('no system prompts here') }}"))
    with pytest.raises(InvalidRequest, match="no system prompts here"):
        enc.encode(ChatPrompt(messages=[ChatMessage(role="user", content="x")]))


def test_fingerprint_follows_the_template(tmp_path):
    folder = _folder(tmp_path)
    before = PromptEncoder(folder).fingerprint
    assert PromptEncoder(folder).fingerprint == before
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text() + " ")
    assert PromptEncoder(folder).fingerprint != before
