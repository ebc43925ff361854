"""SSRF guard: image URLs may only reach public addresses unless configuration allows more.

The check runs in the resolver that aiohttp connects with, so the address checked is the
address used (no DNS rebinding window), on every redirect hop too. IP literals never reach
a resolver, so `check_url` checks them before each request.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from shared.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(OSError):
    """A host that resolves to an address the guard refuses (an OSError so aiohttp keeps it)."""


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: URL, allow_private: bool, param: str) -> None:
    """Scheme and (for IP literals) address checks; DNS names are checked by the resolver."""
    if url.scheme not in ("http", "https"):
        raise InvalidRequest(f"image URLs must be data:, http: or https:, not {url.scheme or '?'}:",
                             param=param)
    if not url.host:
        raise InvalidRequest("the image URL has no host", param=param)
    try:
        ip = ipaddress.ip_address(url.host.strip("[]"))
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if not allow_private and not is_public(ip):
        raise InvalidRequest(f"image URLs may not point at a private or local address ({ip})",
                             param=param)


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the host if any address is not public."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                ip = ipaddress.ip_address(result["host"])
                if not is_public(ip):
                    raise BlockedAddress(f"{host} resolves to a private or local address ({ip})")
        return results

    async def close(self) -> None:
        await self._inner.close()
