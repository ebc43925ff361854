"""The gateway's view of Kafka: silence counts over the pings Kafka did not answer, so a
gateway that was stalled itself does not take its own pause for a Kafka outage."""

import pytest
from aiokafka.errors import KafkaConnectionError

from shared.errors import BusUnavailable, Unavailable

from services.gateway.health import PING_S, KafkaHealth


class FakePublisher:
    def __init__(self, clock: "Clock | None" = None) -> None:
        self.up = True
        self.clock = clock
        self.stall_s = 0.0  # the gateway is stopped while its ping waits

    async def ping(self) -> None:
        if self.stall_s and self.clock is not None:
            self.clock.now += self.stall_s
            raise TimeoutError()  # its wait ran out while the gateway was stopped
        if not self.up:
            raise KafkaConnectionError()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health_of(kafka: FakePublisher, clock: Clock, outages: list) -> KafkaHealth:
    return KafkaHealth(kafka, unreachable_s=3, outage_s=15, on_outage=outages.append, clock=clock)


async def pings(health: KafkaHealth, clock: Clock, seconds: float) -> None:
    """The health loop, for `seconds`: a ping every PING_S."""
    for _ in range(round(seconds / PING_S)):
        clock.now += PING_S
        await health.probe()


async def test_a_gateway_that_was_stalled_does_not_take_its_pause_for_an_outage():
    kafka, clock, outages = FakePublisher(), Clock(), []
    health = health_of(kafka, clock, outages)
    await health.probe()
    kafka.up = False  # a ping goes unanswered (the broker was slow, say) ...
    await pings(health, clock, 0.5)
    clock.now += 60  # ... then the gateway itself is stopped for a minute
    await health.probe()  # and its first ping after the pause fails too
    assert health.reachable and outages == []
    health.check()
    kafka.up = True
    await pings(health, clock, 0.5)
    assert health.silent_s == 0.0


async def test_silence_over_unanswered_pings_refuses_then_ends_streams_then_recovers():
    kafka, clock, outages = FakePublisher(), Clock(), []
    health = health_of(kafka, clock, outages)
    await health.probe()
    kafka.up = False
    await pings(health, clock, 2.5)
    assert health.reachable
    await pings(health, clock, 1.0)
    assert not health.reachable
    with pytest.raises(Unavailable):
        health.check()
    assert outages == []
    await pings(health, clock, 12.0)
    assert len(outages) >= 1 and isinstance(outages[0], BusUnavailable)
    kafka.up = True
    await pings(health, clock, 0.5)
    assert health.reachable and health.silent_s == 0.0


async def test_pings_cut_by_repeated_short_wakes_of_a_paused_gateway_count_for_nothing():
    """make bench resumes an idle target for a moment between the other targets' runs: each
    time, a ping that was waiting when the gateway stopped runs out at once."""
    clock, outages = Clock(), []
    kafka = FakePublisher(clock)
    health = health_of(kafka, clock, outages)
    await health.probe()
    kafka.stall_s = 20.0
    for _ in range(5):
        clock.now += PING_S
        await health.probe()
    assert health.reachable and health.silent_s == 0.0 and outages == []
