"""Two preprocess replicas share the preprocess topic's partitions and both do work."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import metrics_url
from tests.integration.helpers import eventually, metric
from tests.integration.images import image_part, png_url

pytestmark = pytest.mark.stack

REQUESTS = 16


async def test_two_replicas_share_the_partitions(client, stack, http):
    second = stack.start("preprocess-2", "services.preprocess")
    try:
        urls = [stack.metrics_url("preprocess"), metrics_url(second)]
        partitions = int(stack.env.get("SLUICE_PREPROCESS_PARTITIONS", "8"))

        async def split() -> bool:
            owned = [await metric(http, u, "sluice_preprocess_assigned_partitions") for u in urls]
            return sum(owned) == partitions and min(owned) > 0

        await eventually(split)
        before = [await metric(http, u, 'sluice_preprocess_requests_total{outcome="ok"}') for u in urls]
        results = await asyncio.gather(*(
            client.chat.completions.create(
                model=stack.vl_model, max_tokens=2,
                messages=[{"role": "user", "content": [image_part(png_url(32, 32, seed=100 + i))]}])
            for i in range(REQUESTS)))
        assert all(r.usage.completion_tokens == 2 for r in results)
        done = [await metric(http, u, 'sluice_preprocess_requests_total{outcome="ok"}') - b
                for u, b in zip(urls, before)]
        assert sum(done) == REQUESTS and min(done) > 0, done
    finally:
        second.stop()
