from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("sluice_gateway_requests", "HTTP generation requests",
                                ["endpoint", "status"], registry=r)
        self.in_flight = Gauge("sluice_gateway_in_flight", "Generations in flight", registry=r)
        self.ttft = Histogram("sluice_gateway_ttft_seconds", "Time to the first reply message",
                              buckets=_LATENCY, registry=r)
        self.completion_tokens = Counter("sluice_gateway_completion_tokens",
                                         "Completion tokens returned", registry=r)
        self.replies = Counter("sluice_gateway_reply_messages", "Reply messages routed", registry=r)
        self.duplicates = Counter("sluice_gateway_reply_duplicates",
                                  "Reply messages dropped as duplicates", registry=r)
        self.gaps = Counter("sluice_gateway_reply_gaps",
                            "Reply streams failed: missing messages, or a takeover out of place",
                            registry=r)
        self.takeovers = Counter("sluice_gateway_stream_takeovers",
                                 "Streams continued by another worker after a failover", registry=r)
        self.orphans = Counter("sluice_gateway_reply_orphans",
                               "Reply messages for requests no longer waiting", registry=r)
        self.aborts = Counter("sluice_gateway_aborts_published", "Abort events published",
                              registry=r)
        self.resumes = Counter("sluice_gateway_resumes", "Stream resumes, by outcome",
                               ["outcome"], registry=r)
        self.resume_latency = Histogram("sluice_gateway_resume_seconds",
                                        "From a resume request to its first event",
                                        buckets=_LATENCY, registry=r)
        self.dead_letters = Counter("sluice_gateway_dead_letters", "Invalid messages set aside",
                                    registry=r)
