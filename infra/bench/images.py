"""Benchmark images: photo-like 1024x1024 JPEGs (smooth gradients plus noise), each distinct,
so every one is a cache miss for preprocess."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def jpeg_urls(count: int, side: int = 1024, seed: int = 0, quality: int = 90) -> list[str]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([x * 255, y * 255, (1 - x) * y * 255], axis=-1)
    urls = []
    for i in range(count):
        noisy = base + rng.normal(0, 12, base.shape) + i  # the offset makes each image distinct
        pixels = np.clip(noisy, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls
