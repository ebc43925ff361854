"""The gateway's side of stream watches (shared.watches): while a client reads a stream
here, its watch is renewed; when the client leaves, the grace window starts.

A client that disconnects mid-stream gets `GATEWAY_RESUME_GRACE_S` to resume it on any
gateway; the worker abandons the generation once the grace has passed with nobody reading.
With a grace of 0 (and for non-streamed requests, which cannot be resumed), a disconnect
aborts the generation at once, as an explicit cancel does. A stream this gateway ended
because Kafka was unreachable is held (renewed) while the outage lasts: its grace starts
only once Kafka answers again, so that its client can resume it then. Without Redis the
grace cannot be shared: this gateway then aborts the generation itself when the grace
passes, unless the client came back here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.redisconn import REDIS_ERRORS, level
from shared.watches import Watches

from services.gateway.aborts import Aborter

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, watches: Watches, aborter: Aborter, lease_s: float,
                 bus_reachable: Callable[[], bool] = lambda: True) -> None:
        self._watches = watches
        self._aborter = aborter
        self._lease_s = lease_s
        self._bus_reachable = bus_reachable
        self._readers: dict[str, tuple[int, float]] = {}  # rid → (clients reading here, grace)
        self._cut: dict[str, float] = {}  # rid → grace: ended by a Kafka outage, held until it ends
        self._graces: dict[str, asyncio.Task] = {}  # one grace window per stream, when timed here
        self._tasks: set[asyncio.Task] = set()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._readers

    @contextmanager
    def reading(self, request_id: str, grace_s: float) -> Iterator[_Reading]:
        """While a client reads the stream here. Call `left()` on the result if it went away
        before the stream ended, `cut()` if Kafka's absence ended it."""
        count, _ = self._readers.get(request_id, (0, grace_s))
        self._readers[request_id] = (count + 1, grace_s)
        self._cut.pop(request_id, None)
        if (timer := self._graces.pop(request_id, None)) is not None:
            timer.cancel()  # the client came back before its grace ran out
        reading = _Reading()
        try:
            yield reading
        finally:
            count, _ = self._readers.pop(request_id, (1, grace_s))
            if count > 1:
                self._readers[request_id] = (count - 1, grace_s)
            elif reading.outage:
                self._cut[request_id] = grace_s
            elif reading.gone:
                self._abandon(request_id, grace_s)

    async def hold_now(self, request_id: str, grace_s: float) -> None:
        """Renew one stream's watch at once (a resume near the end of its grace window must
        not wait for the next renewal)."""
        try:
            await self._watches.hold([(request_id, self._lease_s + grace_s)])
        except REDIS_ERRORS as exc:
            log.log(level(exc), "could not renew the watch of %s (%s)", request_id, exc)

    def _abandon(self, request_id: str, grace_s: float) -> None:
        if grace_s <= 0:
            self._aborter.abort(request_id, "client_disconnected")
            return
        self._spawn(self._grace(request_id, grace_s), f"grace-{request_id}")

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _grace(self, request_id: str, grace_s: float) -> None:
        try:
            await self._watches.hold([(request_id, grace_s)])
            return  # whoever runs it stops it when the grace has passed with nobody reading
        except REDIS_ERRORS as exc:
            log.log(level(exc), "could not start the grace window of %s in Redis (%s); timing it here",
                    request_id, exc)
        if request_id in self._readers:
            return  # the client came back meanwhile
        timer = self._spawn(self._time_here(request_id, grace_s), f"grace-timer-{request_id}")
        if (previous := self._graces.pop(request_id, None)) is not None:
            previous.cancel()
        self._graces[request_id] = timer

    async def _time_here(self, request_id: str, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        if self._graces.get(request_id) is asyncio.current_task():
            del self._graces[request_id]
            self._aborter.abort(request_id, "client_disconnected")

    async def run(self) -> None:
        """Renew every stream read here, and every one an outage cut, every quarter lease;
        once Kafka answers again, the cut streams' grace windows start."""
        while True:
            if self._cut and self._bus_reachable():
                cut, self._cut = self._cut, {}
                for rid, grace in cut.items():
                    self._abandon(rid, grace)
            entries = [(rid, self._lease_s + grace) for rid, (_, grace) in self._readers.items()]
            entries += [(rid, self._lease_s + grace) for rid, grace in self._cut.items()]
            try:
                await self._watches.hold(entries)
            except REDIS_ERRORS as exc:
                log.debug("watch renewal failed: %s", exc)
            await asyncio.sleep(self._lease_s / 4)

    async def close(self, timeout_s: float = 2.0) -> None:
        """At shutdown: start the grace of every stream still read or held here (their
        clients are cut off and may resume elsewhere)."""
        for rid, (_, grace) in list(self._readers.items()):
            self._abandon(rid, grace)
        for rid, grace in self._cut.items():
            self._abandon(rid, grace)
        self._readers.clear()
        self._cut.clear()
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()


class _Reading:
    def __init__(self) -> None:
        self.gone = False
        self.outage = False

    def left(self) -> None:
        self.gone = True

    def cut(self) -> None:
        """Kafka's absence ended the stream here; its client may resume once Kafka is back."""
        self.outage = True
