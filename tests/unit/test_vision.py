import json

import pytest
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from shared.env import SettingsError
from shared.vision import VisionSpec

SPEC = VisionSpec(image_token_id=5, patch_size=8, merge_size=2, min_pixels=1024, max_pixels=65536)


@pytest.mark.parametrize("width, height", [
    (64, 48), (100, 75), (1, 1), (7, 1000), (1000, 7), (257, 257), (4000, 3000), (16, 16),
    (31, 17), (1024, 1024), (300, 5),
])
def test_target_size_matches_the_model_processor(width, height):
    h, w = smart_resize(height, width, factor=16, min_pixels=1024, max_pixels=65536)
    assert SPEC.target_size(width, height) == (w, h)


def test_tokens_per_image():
    assert SPEC.tokens(*SPEC.target_size(64, 48)) == 12
    assert SPEC.tokens(*SPEC.target_size(100, 75)) == 30


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ValueError, match="aspect ratio"):
        SPEC.target_size(2010, 10)


def _folder(tmp_path, processor: dict, **config):
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": processor}))
    return tmp_path, {"vision_config": {}, **config}


def test_reads_a_qwen_vl_folder(tmp_path):
    folder, cfg = _folder(tmp_path, {"image_processor_type": "Qwen2VLImageProcessorFast",
                                     "patch_size": 16, "merge_size": 2,
                                     "size": {"shortest_edge": 65536, "longest_edge": 16777216}},
                          image_token_id=151655)
    assert VisionSpec.from_folder(folder, cfg) == VisionSpec(151655, 16, 2, 65536, 16777216)


def test_text_models_have_no_vision(tmp_path):
    assert VisionSpec.from_folder(tmp_path, {"hidden_size": 8}) is None


def test_unsupported_image_processor_is_a_clear_error(tmp_path):
    folder, cfg = _folder(tmp_path, {"image_processor_type": "LlavaImageProcessor"}, image_token_id=1)
    with pytest.raises(SettingsError, match="LlavaImageProcessor"):
        VisionSpec.from_folder(folder, cfg)
