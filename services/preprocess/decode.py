"""Image bytes → validated RGB pixels at the served model's size. CPU work: run it in an executor."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InvalidRequest
from shared.vision import ImageLimits, VisionSpec

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


@dataclass(frozen=True, slots=True)
class Decoded:
    width: int
    height: int
    tokens: int
    rgb: bytes


def decode(data: bytes, vision: VisionSpec, limits: ImageLimits, param: str) -> Decoded:
    image = _open(data, limits, param)
    if image.size[0] * image.size[1] > vision.max_pixels or image.size[0] * image.size[1] < vision.min_pixels:
        # Bring it within the model's bounds here, so no stage after this one handles
        # more pixels than the model reads. Within bounds, the model's own processor
        # snaps the sides to its patch grid, exactly as it would for vLLM alone.
        try:
            target = vision.target_size(*image.size)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=param) from None
        image = image.resize(target, Image.Resampling.BICUBIC)
    width, height = image.size
    try:
        grid = vision.target_size(width, height)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param) from None
    return Decoded(width, height, vision.tokens(*grid), image.tobytes())


def _open(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Decode the first frame, upright, in RGB; refuse what is not a complete allowed image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > limits.max_source_pixels:
                raise InvalidRequest(
                    f"the image is {width}x{height} pixels; at most {limits.max_source_pixels} "
                    "pixels are accepted", param=param)
            image.seek(0)  # an animated GIF or WebP: its first frame
            image.load()
    except InvalidRequest:
        raise
    except UnidentifiedImageError:
        raise InvalidRequest(f"the data is not a {', '.join(FORMATS)} image", param=param) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest("the image has too many pixels (decompression bomb)",
                             param=param) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidRequest(f"the image is corrupt or truncated: {exc}", param=param) from None
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # As vLLM does: transparent areas become white.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
