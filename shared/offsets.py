"""Per-partition offset tracking for out-of-order completion.

Messages of one partition finish in any order (long and short generations run side by
side); the committable offset is the lowest one still in flight, or one past the
highest seen when nothing is in flight. Committing it never skips unfinished work.
"""

from __future__ import annotations

import heapq


class PartitionOffsets:
    def __init__(self) -> None:
        self._pending: list[int] = []  # min-heap of offsets in flight
        self._done: set[int] = set()  # finished offsets not yet at the heap's head
        self._next: int | None = None  # one past the highest offset started
        self._committed: int | None = None

    def start(self, offset: int) -> None:
        heapq.heappush(self._pending, offset)
        if self._next is None or offset >= self._next:
            self._next = offset + 1

    def finish(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            self._done.discard(heapq.heappop(self._pending))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def committable(self) -> int | None:
        """The offset to commit now, or None when there is nothing new to commit."""
        if self._next is None:
            return None
        target = self._pending[0] if self._pending else self._next
        if self._committed is not None and target <= self._committed:
            return None
        return target

    def mark_committed(self, offset: int) -> None:
        if self._committed is None or offset > self._committed:
            self._committed = offset
