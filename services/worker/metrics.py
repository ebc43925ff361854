from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


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
        self.dead_letters = Counter("sluice_worker_dead_letters", "Invalid messages set aside",
                                    registry=r)
