"""What Sluice needs to know about a model's image input: the placeholder token and the
image processor's patch grid, read from the model folder; and the image limits."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.env import SettingsError, env_int

# Image processors whose placeholder expansion Sluice implements: Qwen2-VL, Qwen2.5-VL,
# Qwen3-VL and Qwen3-VL-MoE all use this one (a fixed patch grid, merged 2x2 per token).
_GRID_PROCESSORS = ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorFast")


@dataclass(frozen=True, slots=True)
class VisionSpec:
    image_token_id: int
    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int

    @property
    def factor(self) -> int:
        """Side of the pixel square that becomes one token."""
        return self.patch_size * self.merge_size

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model's processor resizes an image to: each side a multiple of
        `factor`, the area within [min_pixels, max_pixels], the aspect ratio kept."""
        f = self.factor
        if min(width, height) < 1 or max(width, height) / min(width, height) > 200:
            raise ValueError(f"an image of {width}x{height} has an unsupported aspect ratio")
        w = round(width / f) * f
        h = round(height / f) * f
        if w * h > self.max_pixels:
            scale = math.sqrt(width * height / self.max_pixels)
            w = max(f, math.floor(width / scale / f) * f)
            h = max(f, math.floor(height / scale / f) * f)
        elif w * h < self.min_pixels:
            scale = math.sqrt(self.min_pixels / (width * height))
            w = math.ceil(width * scale / f) * f
            h = math.ceil(height * scale / f) * f
        return w, h

    def tokens(self, width: int, height: int) -> int:
        """Placeholder tokens one image of this (already target) size takes."""
        return (width // self.factor) * (height // self.factor)

    @classmethod
    def from_folder(cls, path: Path, config: Mapping) -> VisionSpec | None:
        """None for a text-only model; SettingsError for a vision model we cannot expand."""
        if "vision_config" not in config:
            return None
        proc = _image_processor_config(path)
        kind = proc.get("image_processor_type", "?")
        if kind not in _GRID_PROCESSORS:
            raise SettingsError(f"{path}: image processor {kind} is not supported for image input "
                                f"(supported: {', '.join(_GRID_PROCESSORS)})")
        token = config.get("image_token_id", config.get("image_token_index"))
        if not isinstance(token, int):
            raise SettingsError(f"{path}: config.json has no image_token_id")
        size = proc.get("size") or {}
        return cls(
            image_token_id=token,
            patch_size=int(proc.get("patch_size", 14)),
            merge_size=int(proc.get("merge_size", 2)),
            min_pixels=int(proc.get("min_pixels") or size.get("shortest_edge") or 56 * 56),
            max_pixels=int(proc.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280),
        )


def _image_processor_config(path: Path) -> dict:
    combined = path / "processor_config.json"  # transformers 5 writes everything here
    if combined.exists():
        proc = json.loads(combined.read_text()).get("image_processor")
        if isinstance(proc, dict):
            return proc
    legacy = path / "preprocessor_config.json"
    if legacy.exists():
        return json.loads(legacy.read_text())
    raise SettingsError(f"{path}: a vision model without preprocessor_config.json")


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds on what a request may send; the gateway and preprocess both enforce them."""

    max_images: int  # per request
    max_bytes: int  # per encoded image; as base64 it must fit the gateway's body limit
    max_source_pixels: int  # width x height before resizing (decompression bombs)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ImageLimits:
        return cls(
            max_images=env_int(env, "SLUICE_MAX_IMAGES", 8, minimum=1),
            max_bytes=env_int(env, "SLUICE_MAX_IMAGE_BYTES", 4 << 20, minimum=1024),
            max_source_pixels=env_int(env, "SLUICE_MAX_IMAGE_PIXELS", 40_000_000, minimum=1024),
        )
