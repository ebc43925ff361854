"""The worker's reply sender: a run that starts a stream writes its header (for resumes)
just ahead of its first message, once, into the same partition."""

import asyncio

from shared.bus import Meta, ReplyTo
from shared.contracts import StreamOpened, TokenDelta

from services.worker.metrics import WorkerMetrics
from services.worker.ownership import Owned
from services.worker.sender import Sender

META = Meta("r", ReplyTo("replies", 3))
OPENED = StreamOpened(request_id="r", gateway="gw-0", endpoint="chat", model="m", created=0.0,
                      n=1, include_usage=False)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[ReplyTo | None, object]] = []

    async def reply(self, meta: Meta, msg) -> asyncio.Future:
        self.sent.append((meta.reply_to, msg))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class FakeOwnership:
    async def confirm(self, owned: Owned) -> None:
        pass


def delta(seq: int) -> TokenDelta:
    return TokenDelta(request_id="r", source="w", seq=seq, choices=[])


async def sent_by(header: StreamOpened | None) -> tuple[list, WorkerMetrics]:
    publisher, metrics = FakePublisher(), WorkerMetrics()
    owned = Owned("r", asyncio.get_running_loop().create_future())
    sender = Sender(publisher, FakeOwnership(), metrics, owned, META, header)  # type: ignore[arg-type]
    for seq in range(3):
        await sender.send(delta(seq))
    assert await sender.stored()
    return publisher.sent, metrics


async def test_the_header_goes_just_ahead_of_the_first_message_only():
    sent, metrics = await sent_by(OPENED)
    assert [msg for _, msg in sent] == [OPENED, delta(0), delta(1), delta(2)]
    assert {to for to, _ in sent} == {META.reply_to}
    assert metrics.messages._value.get() == 3  # replies; the header is not one


async def test_a_run_that_continues_a_stream_sends_no_header():
    sent, _ = await sent_by(None)
    assert [msg for _, msg in sent] == [delta(0), delta(1), delta(2)]
