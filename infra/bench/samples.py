"""Latency samples tagged with the CLOCK_MONOTONIC time they were taken, so a benchmark
can cut them into its load levels afterwards (another process's clock is the same one)."""

from __future__ import annotations

import time
from array import array


class Samples:
    def __init__(self) -> None:
        self._series: dict[str, tuple[array, array]] = {}

    def add(self, name: str, value_ms: float) -> None:
        at, values = self._series.setdefault(name, (array("d"), array("d")))
        at.append(time.monotonic())
        values.append(value_ms)

    def as_json(self) -> dict:
        return {name: {"at": list(at), "ms": list(values)}
                for name, (at, values) in self._series.items()}


def window(samples: dict, name: str, start: float, end: float) -> list[float]:
    """The values of one series (from `as_json`) taken between start and end."""
    series = samples.get(name)
    if not series:
        return []
    return [ms for at, ms in zip(series["at"], series["ms"]) if start <= at <= end]
