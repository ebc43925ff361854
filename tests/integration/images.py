"""Test images, made here: PNG, JPEG (with an EXIF rotation), GIF, RGBA, and broken ones."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

from PIL import Image


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Noise plus a gradient, so different seeds and sizes give different model outputs."""
    rng = random.Random(seed)
    image = Image.new(mode, (width, height))
    bands = len(mode)
    image.putdata([tuple((x * 255 // width + rng.randrange(64)) % 256 if b % 2 == 0
                         else (y * 255 // height + rng.randrange(64)) % 256 for b in range(bands))
                   for y in range(height) for x in range(width)])
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_url(width: int, height: int, seed: int = 0) -> str:
    return data_url(encode(picture(width, height, seed), "PNG"), "image/png")


def jpeg_rotated(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG whose EXIF says: rotate 90° to display (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(picture(width, height, seed), "JPEG", quality=90, exif=exif.tobytes())


def pixel_bomb(side: int) -> bytes:
    """A small PNG whose header claims side x side pixels."""
    png = bytearray(encode(picture(8, 8), "PNG"))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4:ihdr + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(png[ihdr:ihdr + 17]))
    png[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(png)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}
