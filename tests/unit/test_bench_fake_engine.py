"""The transport benchmark's fake engine: it refuses to start unless explicitly enabled on
benchmark-only topics, it emits exactly max_tokens stamped tokens, and every figure it
produces carries its label."""

from __future__ import annotations

import asyncio
import re

import pytest

from infra.bench.fake_engine import GUARD_ENV, GUARD_VALUE, LABEL, Ticker, check_enabled
from infra.bench.report import transport_markdown
from infra.bench.transport import ceiling


def test_refuses_without_the_explicit_switch() -> None:
    with pytest.raises(SystemExit):
        check_enabled({"SLUICE_TOPIC_PREFIX": "benchfake"})
    with pytest.raises(SystemExit):
        check_enabled({GUARD_ENV: "1", "SLUICE_TOPIC_PREFIX": "benchfake"})


def test_refuses_a_deployments_topics() -> None:
    with pytest.raises(SystemExit):
        check_enabled({GUARD_ENV: GUARD_VALUE})  # default prefix "sluice"
    with pytest.raises(SystemExit):
        check_enabled({GUARD_ENV: GUARD_VALUE, "SLUICE_TOPIC_PREFIX": "prod"})


def test_starts_when_enabled_on_benchmark_topics() -> None:
    check_enabled({GUARD_ENV: GUARD_VALUE, "SLUICE_TOPIC_PREFIX": "benchfake"})


async def test_ticker_emits_exactly_max_tokens_with_stamps() -> None:
    ticker = Ticker(interval_s=0.001)
    steps = asyncio.create_task(ticker.run())
    try:
        outputs = [out async for out in ticker.generate(max_tokens=7, n=1)]
    finally:
        steps.cancel()
    ids = [t for out in outputs for t in out.outputs[0].token_ids]
    text = "".join(out.outputs[0].text for out in outputs)
    assert len(ids) == 7
    assert len(re.findall(r"\[\d+\]", text)) == 7
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "length"
    assert not any(out.finished for out in outputs[:-1])


def test_every_transport_figure_is_labelled() -> None:
    pair = {"p50": 1.0, "p99": 2.0, "n": 3}
    level = {"engine": LABEL, "level": "stream c1", "concurrency": 1, "max_tokens": 8,
             "requests": 1, "offered_tokens_per_s": 200.0, "output_throughput": 190.0,
             "request_throughput": 1.0, "ttft_ms": pair, "added_per_token_ms": pair,
             "hops_ms": {k: pair for k in ("request_hop_ms", "infer_hop_ms", "worker_infer_hop_ms",
                                          "gateway_to_worker_ms", "reply_ack_ms")},
             "failed": 0, "rss": {"cpu_pct": {"gateway": 5.0}}}
    text = transport_markdown({"token_interval_ms": 5.0, "levels": [level],
                               "summary": ceiling([level])})
    lines = text.splitlines()
    rows = [line for line in lines if "stream c1" in line]  # the level's row and the summary
    assert len(rows) == 2 and all(LABEL in line for line in rows)
