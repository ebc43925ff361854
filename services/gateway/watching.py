"""The gateway's side of stream watches (shared.watches): while a client reads a stream
here, its watch is renewed; when the client leaves, the grace window starts.

A client that disconnects mid-stream gets `GATEWAY_RESUME_GRACE_S` to resume it on any
gateway; the worker abandons the generation once the grace has passed with nobody reading.
With a grace of 0 (and for non-streamed requests, which cannot be resumed), a disconnect
aborts the generation at once, as an explicit cancel does. Without Redis the grace cannot
be shared: this gateway then aborts the generation itself when the grace passes, unless the
client came back here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from shared.redisconn import REDIS_ERRORS, level
from shared.watches import Watches

from services.gateway.aborts import Aborter

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, watches: Watches, aborter: Aborter, lease_s: float) -> None:
        self._watches = watches
        self._aborter = aborter
        self._lease_s = lease_s
        self._readers: dict[str, tuple[int, float]] = {}  # rid → (clients reading here, grace)
        self._tasks: set[asyncio.Task] = set()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._readers

    @contextmanager
    def reading(self, request_id: str, grace_s: float) -> Iterator[_Reading]:
        """While a client reads the stream here. Call `left()` on the result if it went away
        before the stream ended."""
        count, _ = self._readers.get(request_id, (0, grace_s))
        self._readers[request_id] = (count + 1, grace_s)
        reading = _Reading()
        try:
            yield reading
        finally:
            count, _ = self._readers.pop(request_id, (1, grace_s))
            if count > 1:
                self._readers[request_id] = (count - 1, grace_s)
            elif reading.gone:
                self._abandon(request_id, grace_s)

    def _abandon(self, request_id: str, grace_s: float) -> None:
        if grace_s <= 0:
            self._aborter.abort(request_id, "client_disconnected")
            return
        task = asyncio.create_task(self._grace(request_id, grace_s), name=f"grace-{request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grace(self, request_id: str, grace_s: float) -> None:
        try:
            await self._watches.hold([(request_id, grace_s)])
            return  # whoever runs it stops it when the grace has passed with nobody reading
        except REDIS_ERRORS as exc:
            log.log(level(exc), "could not start the grace window of %s in Redis (%s); timing it here",
                        request_id, exc)
        await asyncio.sleep(grace_s)
        if request_id not in self._readers:
            self._aborter.abort(request_id, "client_disconnected")

    async def run(self) -> None:
        """Renew every stream read here, every quarter lease."""
        while True:
            entries = [(rid, self._lease_s + grace) for rid, (_, grace) in self._readers.items()]
            try:
                await self._watches.hold(entries)
            except REDIS_ERRORS as exc:
                log.debug("watch renewal failed: %s", exc)
            await asyncio.sleep(self._lease_s / 4)

    async def close(self, timeout_s: float = 2.0) -> None:
        """At shutdown: start the grace of every stream still read here (their clients are
        cut off and may resume elsewhere)."""
        for rid, (_, grace) in list(self._readers.items()):
            self._abandon(rid, grace)
        self._readers.clear()
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()


class _Reading:
    def __init__(self) -> None:
        self.gone = False

    def left(self) -> None:
        self.gone = True
