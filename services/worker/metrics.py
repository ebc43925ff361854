from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("sluice_worker_requests", "Requests finished", ["finish"], registry=r)
        self.aborts = Counter("sluice_worker_aborts", "Requests aborted on a client's request",
                              registry=r)
        self.tokens = Counter("sluice_worker_generated_tokens", "Completion tokens generated",
                              registry=r)
        self.messages = Counter("sluice_worker_reply_messages", "TokenDelta messages sent", registry=r)
        self.in_flight = Gauge("sluice_worker_in_flight", "Requests in the engine", registry=r)
        self.reply_ack = Histogram("sluice_worker_reply_ack_seconds",
                                   "From queuing a reply to the broker's acknowledgement",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
                                   registry=r)
        self.dead_letters = Counter("sluice_worker_dead_letters", "Invalid messages set aside",
                                    registry=r)
