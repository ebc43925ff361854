from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class TokenizerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("sluice_tokenizer_requests", "Requests handled", ["outcome"], registry=r)
        self.cache = Counter("sluice_tokenizer_cache", "Token cache lookups", ["result"], registry=r)
        self.dead_letters = Counter("sluice_tokenizer_dead_letters", "Invalid messages set aside",
                                    registry=r)
        self.encode_seconds = Histogram("sluice_tokenizer_encode_seconds", "Tokenization time",
                                        registry=r)
