"""Preprocessed images in Redis: the claim check that Kafka messages carry instead of pixels.

An image is stored as raw RGB bytes under its content key, with its ImageRef beside it,
both with the same TTL. A hit refreshes the TTL, so an image in use does not expire.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared.contracts import ImageRef, ImageRefCodec


class ImageStore:
    def __init__(self, redis: Redis, prefix: str, ttl_s: int | None = None) -> None:
        """Without `ttl_s` the store only reads pixels (a worker); find and put need it."""
        self._redis = redis
        self._pixels = f"{prefix}:img:"
        self._refs = f"{prefix}:imgref:"
        self._ttl = ttl_s

    async def find(self, key: str) -> ImageRef | None:
        """The stored image's ref, its TTL refreshed; None if it is not (or no longer) stored."""
        assert self._ttl is not None, "a read-only image store"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._refs + key)
            pipe.expire(self._refs + key, self._ttl)
            pipe.expire(self._pixels + key, self._ttl)
            raw, _, pixels_kept = await pipe.execute()
        if raw is None or not pixels_kept:
            return None
        return ImageRefCodec.decode(raw)

    async def put(self, ref: ImageRef, rgb: bytes) -> None:
        assert self._ttl is not None, "a read-only image store"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._pixels + ref.key, rgb, ex=self._ttl)
            pipe.set(self._refs + ref.key, ImageRefCodec.encode(ref), ex=self._ttl)
            await pipe.execute()

    async def pixels(self, key: str) -> bytes | None:
        return await self._redis.get(self._pixels + key)
