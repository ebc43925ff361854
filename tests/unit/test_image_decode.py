import io

import pytest
from PIL import Image

from shared.errors import InvalidRequest
from shared.vision import ImageLimits, VisionSpec

from services.preprocess.decode import decode

SPEC = VisionSpec(image_token_id=5, patch_size=8, merge_size=2, min_pixels=1024, max_pixels=65536)
LIMITS = ImageLimits(max_images=8, max_bytes=1 << 20, max_source_pixels=1_000_000)


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_formats_decode_to_rgb(fmt):
    out = decode(_bytes(Image.new("RGB", (64, 48), (10, 200, 30)), fmt), SPEC, LIMITS, "p")
    assert (out.width, out.height, out.tokens) == (64, 48, 12)
    assert len(out.rgb) == 64 * 48 * 3


def test_within_bounds_is_left_for_the_model_processor():
    out = decode(_bytes(Image.new("RGB", (100, 75)), "PNG"), SPEC, LIMITS, "p")
    assert (out.width, out.height, out.tokens) == (100, 75, 30)  # snapped later to 96x80


def test_over_the_model_bound_is_resized_to_its_target():
    out = decode(_bytes(Image.new("RGB", (800, 600)), "PNG"), SPEC, LIMITS, "p")
    assert (out.width, out.height) == SPEC.target_size(800, 600)
    assert out.width * out.height <= SPEC.max_pixels


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = decode(_bytes(Image.new("RGB", (64, 32)), "JPEG", exif=exif.tobytes()), SPEC, LIMITS, "p")
    assert (out.width, out.height) == (32, 64)


def test_transparency_becomes_white():
    out = decode(_bytes(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG"), SPEC, LIMITS, "p")
    assert out.rgb[:3] == b"\xff\xff\xff"


def test_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode(buf.getvalue(), SPEC, LIMITS, "p")
    assert out.rgb[:3] == b"\xff\x00\x00"


@pytest.mark.parametrize("data, words", [
    (b"not an image", "not a PNG"),
    (_bytes(Image.new("RGB", (8, 8)), "BMP"), "not a PNG"),
    (_bytes(Image.new("RGB", (200, 200)), "PNG")[:120], "truncated"),
    (_bytes(Image.new("1", (2000, 1000)), "PNG"), "pixels"),
])
def test_bad_images_are_invalid_requests_naming_the_part(data, words):
    with pytest.raises(InvalidRequest, match=words) as info:
        decode(data, SPEC, LIMITS, "messages.0.content.1.image_url")
    assert info.value.param == "messages.0.content.1.image_url"
