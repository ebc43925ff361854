"""Whether the gateway reaches Kafka, from a metadata round trip twice a second.

Kafka silent for `kafka_unreachable_s` (3 s, counted over the pings it did not answer): new
requests and resumes get a 503 with Retry-After at once instead of waiting on a producer
that cannot deliver. Silent for
`kafka_outage_s` (15 s): every open stream ends with an error event, rather than hang; a
client may resume it once Kafka is back. A broker restart or a leader election stalls
streams for less than that and costs nothing. Everything recovers by itself: the next
answer makes the gateway admit again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shared.bus import Publisher
from shared.errors import BusUnavailable, SluiceError, Unavailable

log = logging.getLogger(__name__)

PING_S = 0.5
PING_TIMEOUT_S = 1.0
STALL_S = 0.5  # a wait this much later than asked for: the gateway itself was stalled


class KafkaHealth:
    def __init__(self, publisher: Publisher, unreachable_s: float, outage_s: float,
                 on_outage: Callable[[SluiceError], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publisher = publisher
        self._unreachable_s = unreachable_s
        self._outage_s = outage_s
        self._on_outage = on_outage
        self._clock = clock
        self._silent_s = 0.0  # over the unanswered pings since the last answer
        self._last_probe: float | None = None  # when the last ping's outcome was known
        self._reported = False

    @property
    def silent_s(self) -> float:
        """How long Kafka has not answered, counted over the pings this gateway made: each
        unanswered ping adds the time since the previous outcome, at most one ping period.
        A ping whose wait ran late (the gateway itself was stalled: a long pause, a frozen
        VM, SIGSTOP) adds nothing: it measured the gateway, not Kafka, and a gateway that
        counted its own pauses would refuse every request and end every stream on waking."""
        return self._silent_s

    @property
    def reachable(self) -> bool:
        return self.silent_s < self._unreachable_s

    def check(self) -> None:
        if not self.reachable:
            raise Unavailable(f"the message bus has been unreachable for {self.silent_s:.0f} s",
                              retry_after=5)

    async def probe(self) -> None:
        """One ping; past `outage_s` of silence, open streams end (again on every failed ping
        while it lasts: streams opened meanwhile end too)."""
        asked = self._clock()
        try:
            await asyncio.wait_for(self._publisher.ping(), PING_TIMEOUT_S)
        except Exception as exc:  # any failure to get an answer counts as silence
            now = self._clock()
            previous = self._last_probe if self._last_probe is not None else asked
            stalled = now - asked > PING_TIMEOUT_S + STALL_S or asked - previous > PING_S + STALL_S
            if not stalled:
                self._silent_s += min(now - previous, PING_S + PING_TIMEOUT_S)
            self._last_probe = now
            if self._silent_s >= self._outage_s:
                if not self._reported:
                    log.error("Kafka unreachable for %.0f s (%r): ending open streams",
                              self._silent_s, exc)
                    self._reported = True
                self._on_outage(BusUnavailable(
                    f"the message bus has been unreachable for {self._silent_s:.0f} s; resume "
                    "the stream once it is back", retry_after=5))
            return
        if self._reported:
            log.info("Kafka answers again")
        self._reported = False
        self._silent_s = 0.0
        self._last_probe = self._clock()

    async def run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PING_S)
