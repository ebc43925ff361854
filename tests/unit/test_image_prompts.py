"""Image placeholders: expanded by the tokenizer, collapsed again for vLLM by the worker, and
image URLs replaced by refs in preprocess."""

import pytest

from infra.models.bpe import train_bpe, wrap
from infra.models.tiny_qwen3vl import CHAT_TEMPLATE, IMAGE_ID, SPECIAL
from shared.contracts import (GenerateRequest, ImagePart, ImageRef, ImageUrlPart, PartsChatPrompt,
                              PartsMessage, Sampling, TextPart)
from shared.errors import InvalidRequest
from shared.vision import VisionSpec

from services.preprocess.convert import image_urls, resolve
from services.tokenizer.prompts import PromptEncoder, expand_images
from services.worker.images import collapse_images

VISION = VisionSpec(image_token_id=IMAGE_ID, patch_size=8, merge_size=2, min_pixels=1024,
                    max_pixels=65536)


def _ref(key: str, tokens: int) -> ImageRef:
    return ImageRef(key=key, width=16, height=16 * tokens, tokens=tokens)


def _encoder(tmp_path) -> PromptEncoder:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("describe this picture of a fox\n" * 50)
    tok = wrap(train_bpe(300, SPECIAL, [str(corpus)]), bos=None, eos="<|im_end|>",
               pad="<|endoftext|>", chat_template=CHAT_TEMPLATE, model_max_length=512)
    tok.save_pretrained(tmp_path / "tok")
    return PromptEncoder(tmp_path / "tok", VISION)


def _prompt(*parts) -> PartsChatPrompt:
    return PartsChatPrompt(messages=[PartsMessage(role="user", parts=list(parts))])


def test_each_image_placeholder_becomes_its_token_count(tmp_path):
    enc = _encoder(tmp_path)
    ids = enc.encode(_prompt(ImagePart(image=_ref("a", 3)), TextPart(text="describe"),
                             ImagePart(image=_ref("b", 2))))
    assert ids.count(IMAGE_ID) == 5
    text = enc._tok.decode(ids)
    assert text.startswith("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * 3 + "<|vision_end|>")
    assert "describe<|vision_start|>" + "<|image_pad|>" * 2 + "<|vision_end|><|im_end|>" in text


def test_unresolved_image_urls_are_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="preprocess"):
        _encoder(tmp_path).encode(_prompt(ImageUrlPart(url="http://x/y.png")))


def test_expand_and_collapse_are_inverse():
    refs = [_ref("a", 3), _ref("b", 1), _ref("c", 2)]
    ids = [1, IMAGE_ID, 7, IMAGE_ID, IMAGE_ID, 8]  # two adjacent placeholders
    expanded = expand_images(ids, IMAGE_ID, [r.tokens for r in refs])
    assert expanded == [1, *[IMAGE_ID] * 3, 7, IMAGE_ID, IMAGE_ID, IMAGE_ID, 8]
    assert collapse_images(expanded, IMAGE_ID, refs) == ids


@pytest.mark.parametrize("ids, words", [
    ([1, IMAGE_ID, IMAGE_ID], "placeholders for 1 of its 2"),  # short run for the 2nd image
    ([1, IMAGE_ID, IMAGE_ID, IMAGE_ID, IMAGE_ID, IMAGE_ID], "more image placeholders"),
    ([1, 2, 3], "placeholders for 0 of its 2"),
])
def test_collapse_refuses_a_prompt_that_does_not_fit_its_images(ids, words):
    with pytest.raises(InvalidRequest, match=words):
        collapse_images(ids, IMAGE_ID, [_ref("a", 2), _ref("b", 2)])


def test_expand_refuses_a_placeholder_count_mismatch():
    with pytest.raises(InvalidRequest, match="2 image placeholders for 1 images"):
        expand_images([IMAGE_ID, 4, IMAGE_ID], IMAGE_ID, [3])


def test_preprocess_replaces_urls_in_order_and_names_their_places():
    req = GenerateRequest(
        request_id="r", model="m", created=0.0, sampling=Sampling(),
        prompt=PartsChatPrompt(messages=[
            PartsMessage(role="system", parts=[TextPart(text="sys")]),
            PartsMessage(role="user", parts=[TextPart(text="a"), ImageUrlPart(url="u1"),
                                             ImageUrlPart(url="u2")])]))
    assert [p for p, _ in image_urls(req.prompt)] == [
        "messages.1.content.1.image_url", "messages.1.content.2.image_url"]
    out = resolve(req, [_ref("k1", 1), _ref("k2", 2)])
    assert out.prompt.images() == [_ref("k1", 1), _ref("k2", 2)]
    assert out.prompt.messages[1].parts[0] == TextPart(text="a") and not out.prompt.image_urls()
