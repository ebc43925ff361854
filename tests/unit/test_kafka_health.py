"""The gateway's view of Kafka: silence counts from the first unanswered ping, so a gateway
that was stalled itself does not take its own pause for a Kafka outage."""

from aiokafka.errors import KafkaConnectionError
import pytest

from shared.errors import BusUnavailable, Unavailable

from services.gateway.health import KafkaHealth


class FakePublisher:
    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> None:
        if not self.up:
            raise KafkaConnectionError()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_silence_counts_from_the_first_unanswered_ping_not_the_last_answer():
    kafka, clock, outages = FakePublisher(), Clock(), []
    health = KafkaHealth(kafka, unreachable_s=3, outage_s=15, on_outage=outages.append, clock=clock)
    await health.probe()
    clock.now += 60  # the gateway itself was stalled (SIGSTOP, a frozen VM): nobody asked
    assert health.reachable
    health.check()
    await health.probe()
    assert health.reachable and outages == []

    kafka.up = False
    await health.probe()
    assert health.reachable  # one unanswered ping is not silence yet
    clock.now += 3.1
    await health.probe()
    assert not health.reachable
    with pytest.raises(Unavailable):
        health.check()
    assert outages == []
    clock.now += 12
    await health.probe()
    assert len(outages) == 1 and isinstance(outages[0], BusUnavailable)

    kafka.up = True
    await health.probe()
    assert health.reachable and health.silent_s == 0.0
