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
        self.abandoned = Counter("sluice_worker_abandoned",
                                 "Requests stopped because nobody read their stream any more "
                                 "(the client left for longer than its grace, or its gateway died)",
                                 registry=r)
        self.tokens = Counter("sluice_worker_generated_tokens", "Completion tokens generated",
                              registry=r)
        self.messages = Counter("sluice_worker_reply_messages", "TokenDelta messages sent", registry=r)
        self.in_flight = Gauge("sluice_worker_in_flight", "Requests in the engine", registry=r)
        self.admissions = Counter("sluice_worker_engine_admissions",
                                  "Engine requests started (fresh, or continuing a takeover)",
                                  ["kind"], registry=r)
        self.takeovers = Counter("sluice_worker_takeovers",
                                 "Requests continued from another worker's stream", registry=r)
        self.waited = Counter("sluice_worker_waited",
                              "Redelivered requests found running (here or on another worker): "
                              "waited for, not run again", registry=r)
        self.fenced = Counter("sluice_worker_fenced",
                              "Requests stopped here: another worker took them over", registry=r)
        self.handoffs = Counter("sluice_worker_handoffs",
                                "Requests released for another worker to continue", registry=r)
        self.expired = Counter("sluice_worker_expired",
                               "Requests answered with a timeout: their deadline had passed",
                               registry=r)
        self.reply_ack = Histogram("sluice_worker_reply_ack_seconds",
                                   "From queuing a reply to the broker's acknowledgement",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
                                   registry=r)
        self.dead_letters = Counter("sluice_worker_dead_letters", "Invalid messages set aside",
                                    registry=r)
