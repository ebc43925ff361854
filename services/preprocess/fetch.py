"""Image bytes from a data: URL or an http(s) URL, within the configured limits."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

import aiohttp
from yarl import URL

from shared.errors import InvalidRequest
from shared.vision import ImageLimits

from services.preprocess.guard import BlockedAddress, GuardedResolver, check_url
from services.preprocess.settings import FetchSettings

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class DataUrl:
    media_type: str
    payload: str  # base64


def parse_data_url(url: str, limits: ImageLimits, param: str) -> DataUrl:
    """Header checks only (cheap); `decode_base64` does the heavy part in an executor."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidRequest("the data: URL has no ',' before its data", param=param)
    fields = header.split(";")
    media_type = fields[0].strip().lower()
    if "base64" not in fields[1:]:
        raise InvalidRequest("image data: URLs must be base64-encoded (data:image/png;base64,...)",
                             param=param)
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if media_type not in IMAGE_TYPES:
        raise InvalidRequest(f"unsupported image type {media_type or '(none)'}; "
                             f"send one of {', '.join(IMAGE_TYPES)}", param=param)
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise InvalidRequest(f"the image is larger than {limits.max_bytes} bytes", param=param)
    return DataUrl(media_type, payload)


def decode_base64(data: DataUrl, param: str) -> bytes:
    try:
        raw = base64.b64decode(data.payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image data is not valid base64", param=param) from None
    if not raw:
        raise InvalidRequest("the image data is empty", param=param)
    return raw


class Fetcher:
    """http(s) fetches: a total time limit, a byte limit, few redirects, public addresses only."""

    def __init__(self, settings: FetchSettings, limits: ImageLimits) -> None:
        self._settings = settings
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._settings.allow_private),
                                         limit=64, ttl_dns_cache=None, use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s),
            headers={"Accept": ", ".join(IMAGE_TYPES), "User-Agent": "sluice-preprocess"})
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str, param: str) -> bytes:
        assert self._session is not None
        current = URL(url)
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                for _ in range(self._settings.max_redirects + 1):
                    check_url(current, self._settings.allow_private, param)
                    async with self._session.get(current, allow_redirects=False) as resp:
                        if resp.status in _REDIRECTS and "Location" in resp.headers:
                            current = current.join(URL(resp.headers["Location"]))
                            continue
                        return await self._body(resp, param)
        except TimeoutError:
            raise InvalidRequest(f"fetching the image took longer than {self._settings.timeout_s:g}s",
                                 param=param) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddress):
                raise InvalidRequest(f"image URLs may not point at a private or local address: "
                                     f"{exc.os_error}", param=param) from None
            raise InvalidRequest(f"could not connect to fetch the image: {exc.os_error or exc}",
                                 param=param) from None
        except aiohttp.InvalidURL:
            raise InvalidRequest("the image URL is not a valid URL", param=param) from None
        except aiohttp.ClientError as exc:
            raise InvalidRequest(f"could not fetch the image: {type(exc).__name__}: {exc}",
                                 param=param) from None
        raise InvalidRequest(f"the image URL redirected more than {self._settings.max_redirects} "
                             "times", param=param)

    async def _body(self, resp: aiohttp.ClientResponse, param: str) -> bytes:
        if resp.status != 200:
            raise InvalidRequest(f"fetching the image returned HTTP {resp.status}", param=param)
        if resp.content_type not in IMAGE_TYPES:
            raise InvalidRequest(f"the image URL returned {resp.content_type}, not one of "
                                 f"{', '.join(IMAGE_TYPES)}", param=param)
        limit = self._limits.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise InvalidRequest(f"the image is larger than {limit} bytes", param=param)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                raise InvalidRequest(f"the image is larger than {limit} bytes", param=param)
        if not body:
            raise InvalidRequest("the image URL returned no data", param=param)
        return bytes(body)
