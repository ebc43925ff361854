"""Which reply messages belong to a request's stream, and in what order.

Each reply carries `source` (the worker instance), `epoch` (its claim on the request) and
`seq` (message number). Within an epoch the stream is one source's messages in `seq`
order: a resent copy is a duplicate, a skipped number a gap, and a second source with the
same epoch an accidental second run. A newer epoch is a takeover: a worker that claimed the
request after its owner died continues the stream. It is accepted only at the exact place
where the stream stands (the next `seq`, and for each choice the next token position);
anything else means two workers disagree about the stream, and it fails rather than
deliver tokens twice or lose some. Messages of an older epoch after a takeover are stale.

The gateway's collectors and the worker's reading of the reply log (shared.replylog) both
use this, so a takeover continues exactly where a reader of the log stands.
"""

from __future__ import annotations

from enum import Enum

from shared.contracts import ErrorReply, Reply, TokenDelta


class Verdict(Enum):
    ACCEPT = "accept"
    DUPLICATE = "duplicate"  # seen already, or a second run under the same epoch
    STALE = "stale"  # from an epoch that has been taken over
    GAP = "gap"  # messages are missing before this one
    DIVERGED = "diverged"  # a takeover that does not start where the stream stands


class ReplySequencer:
    def __init__(self) -> None:
        self.source: str | None = None
        self.epoch = 0
        self.next_seq = 0
        self.positions: dict[int, int] = {}  # choice index → tokens delivered so far

    @property
    def started(self) -> bool:
        return self.source is not None

    def check(self, msg: Reply) -> Verdict:
        if self.source is None:
            return Verdict.ACCEPT if msg.seq == 0 else Verdict.GAP
        if msg.epoch < self.epoch:
            return Verdict.STALE
        if msg.epoch == self.epoch:
            if msg.source != self.source or msg.seq < self.next_seq:
                return Verdict.DUPLICATE
            return Verdict.GAP if msg.seq > self.next_seq else Verdict.ACCEPT
        # A takeover: only where the stream stands.
        if msg.seq != self.next_seq:
            return Verdict.GAP if msg.seq > self.next_seq else Verdict.DIVERGED
        if isinstance(msg, TokenDelta):
            for c in msg.choices:
                if c.num_tokens - len(c.token_ids) != self.positions.get(c.index, 0):
                    return Verdict.DIVERGED
        return Verdict.ACCEPT

    def accept(self, msg: Reply) -> None:
        """Advance past `msg`, which check() accepted."""
        self.source, self.epoch, self.next_seq = msg.source, msg.epoch, msg.seq + 1
        if isinstance(msg, TokenDelta):
            for c in msg.choices:
                self.positions[c.index] = c.num_tokens

    def offer(self, msg: Reply) -> Verdict:
        verdict = self.check(msg)
        if verdict is Verdict.ACCEPT:
            self.accept(msg)
        return verdict


def is_final(msg: Reply) -> bool:
    return isinstance(msg, ErrorReply) or msg.finished
