"""Request ids that say where their stream is, so that any gateway can find a stream from
its id alone, without Redis or the gateway that started it.

A request id is 32 hex digits: the creation time (unix milliseconds, 11 digits), the
partition of the reply topic its replies go to (3 digits), and 72 random bits. A response's
id is the request id behind `chatcmpl-` (chat) or `cmpl-` (completions).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_ID = re.compile(r"[0-9a-f]{32}")
_PREFIXES = ("chatcmpl-", "cmpl-")
MAX_PARTITIONS = 0xFFF + 1


@dataclass(frozen=True, slots=True)
class StreamKey:
    request_id: str
    created_ms: int
    partition: int


def new_request_id(partition: int, now_s: float) -> str:
    if not 0 <= partition < MAX_PARTITIONS:
        raise ValueError(f"reply partition {partition} does not fit a request id")
    return f"{int(now_s * 1000):011x}{partition:03x}{secrets.token_hex(9)}"


def parse_request_id(request_id: str) -> StreamKey | None:
    """None for an id this module did not make (an integration's own, or garbage)."""
    if not _ID.fullmatch(request_id):
        return None
    return StreamKey(request_id, int(request_id[:11], 16), int(request_id[11:14], 16))


def parse_response_id(response_id: str) -> StreamKey | None:
    for prefix in _PREFIXES:
        if response_id.startswith(prefix):
            return parse_request_id(response_id[len(prefix):])
    return None
