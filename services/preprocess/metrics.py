from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class PreprocessMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("sluice_preprocess_requests", "Requests handled", ["outcome"],
                                registry=r)
        # hit: the same content was preprocessed before (or earlier in this request).
        self.images = Counter("sluice_preprocess_images", "Images by outcome", ["result"], registry=r)
        self.dead_letters = Counter("sluice_preprocess_dead_letters", "Invalid messages set aside",
                                    registry=r)
        self.fetch_seconds = Histogram("sluice_preprocess_fetch_seconds", "http(s) image fetch time",
                                       registry=r)
        self.decode_seconds = Histogram("sluice_preprocess_decode_seconds",
                                        "Decode, validate and resize time per image", registry=r)
        self.partitions = Gauge("sluice_preprocess_assigned_partitions",
                                "Partitions of the preprocess topic this replica owns", registry=r)
