"""Health, readiness, metrics, models, and the Kafka topology."""

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.helpers import metric

pytestmark = pytest.mark.stack


async def test_health_and_ready(http, stack):
    async with http.get("/health") as resp:
        assert resp.status == 200
    async with http.get("/ready") as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["checks"] == {"kafka": "ok", "replies": "ok"}
    assert body["redis"] == "ok"
    assert body["models"] == {stack.model: "ready", stack.vl_model: "ready"}


async def test_metrics_are_prometheus_text(http, stack):
    async with http.get("/metrics") as resp:
        assert resp.status == 200
        assert "sluice_gateway_requests_total" in await resp.text()
    async with http.get(stack.worker_metrics) as resp:
        assert "sluice_worker_generated_tokens_total" in await resp.text()
    async with http.get(stack.tokenizer_metrics) as resp:
        assert "sluice_tokenizer_cache_total" in await resp.text()
    async with http.get(stack.metrics_url("preprocess")) as resp:
        assert "sluice_preprocess_images_total" in await resp.text()


async def test_topics_exist_with_explicit_partition_counts(stack):
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
    await admin.start()
    try:
        expected = {"sluice.requests": 8, "sluice.preprocess": 8, f"sluice.infer.cpu.{stack.model}": 8,
                    f"sluice.infer.cpu.{stack.vl_model}": 8, "sluice.aborts": 1,
                    "sluice.deadletter": 1, stack.reply_topic: 16}
        described = await admin.describe_topics(list(expected))
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in expected])
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == expected
    # Every topic keeps records for a bounded time: prompts and completions do not sit on
    # disk for the broker's default week; the dead-letter topic keeps them longest.
    retention = {name: int(dict((e[0], e[1]) for e in entries)["retention.ms"])
                 for response in configs for _, _, _, name, entries in response.resources}
    assert set(retention) == set(expected)
    assert max(retention, key=retention.get) == "sluice.deadletter"
    assert all(ms <= 3 * 3600 * 1000 for name, ms in retention.items() if name != "sluice.deadletter")


async def test_repeated_prompt_hits_the_token_cache(http, client, stack):
    
    before = await metric(http, stack.tokenizer_metrics, 'sluice_tokenizer_cache_total{result="hit"}')
    messages = [{"role": "user", "content": "cache me if you can"}]
    for _ in range(2):
        await client.chat.completions.create(model=stack.model, messages=messages, max_tokens=2)
    after = await metric(http, stack.tokenizer_metrics, 'sluice_tokenizer_cache_total{result="hit"}')
    assert after >= before + 1
