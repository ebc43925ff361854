"""Where a worker of a model reads, how its consumer group is named, and under which key
it reports being alive: the benchmark's stand-ins (fake engine, Kafka observer) take
them from here only, so a change of the worker's routing is a change in this file.
They follow services/worker (per model since the input topic became Topics.infer(model)).
"""

from __future__ import annotations

from shared.settings import ModelSpec, Topics


def infer_topic(topics: Topics, model: ModelSpec) -> str:
    return topics.infer(model)


def worker_group(topics: Topics, model: ModelSpec) -> str:
    return f"{topics.prefix}-worker-{model.route}"


def liveness_key(model: ModelSpec) -> str:
    return model.route
