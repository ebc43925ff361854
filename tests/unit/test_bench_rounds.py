"""`make bench`'s interleaved rounds: per-target medians, and ratios taken within a round
(the two targets ran back to back) rather than between medians."""

from __future__ import annotations

import pytest

from infra.bench.loads import Load
from infra.bench.report import ratios_table
from infra.bench.run import ratios, summarize

LOAD = Load("c32", 32, 160)


def _row(tok_s: float, ttft: float, itl: float, *, completed: int = 160, cpu: float = 0.0) -> dict:
    return {"completed": completed, "failed": 0, "duration": 10.0, "request_throughput": tok_s / 128,
            "output_throughput": tok_s, "p50_ttft_ms": ttft, "p99_ttft_ms": ttft * 2,
            "p50_itl_ms": itl, "p99_itl_ms": itl * 3, "p50_e2el_ms": 1000.0, "p99_e2el_ms": 1200.0,
            "median_tpot_ms": itl, "total_input_tokens": 40960, "total_output_tokens": 20480,
            "rss": {"trees_mib": {"worker": 100.0 + tok_s / 100}, "processes_mib": {},
                    "cpu_pct": {"worker": cpu}}}


def test_summary_takes_medians_worst_counts_and_the_median_rounds_cpu() -> None:
    rows = [_row(2000, 200, 12, cpu=1), _row(2400, 180, 10, completed=159, cpu=2),
            _row(2200, 250, 11, cpu=3)]
    s = summarize(rows)
    assert s["output_throughput"] == 2200
    assert s["p50_ttft_ms"] == 200
    assert s["p50_itl_ms"] == 11
    assert s["completed"] == 159  # the worst round shows
    assert s["rss"]["trees_mib"]["worker"] == pytest.approx(124.0)  # the largest
    assert s["rss"]["cpu_pct"] == {"worker": 3}  # from the round at the median tok/s
    assert s["rounds"] == 3


def test_differing_token_totals_are_kept_apart() -> None:
    short = _row(2000, 200, 12)
    short["total_output_tokens"] = 20000
    assert summarize([_row(2000, 200, 12), short])["total_output_tokens"] == [20000, 20480]


def test_ratios_pair_rounds_not_medians() -> None:
    # The machine slows down between rounds; within each round Sluice is at 0.9.
    sluice = [_row(1800, 210, 11), _row(900, 420, 22), _row(1350, 300, 15)]
    serve = [_row(2000, 200, 10), _row(1000, 400, 20), _row(1500, 290, 14)]
    targets = {"sluice": {"rounds": {"c32": sluice}, "loads": {"c32": summarize(sluice)}},
               "vllm-serve": {"rounds": {"c32": serve}, "loads": {"c32": summarize(serve)}}}
    r = ratios(targets, (LOAD,))["c32"]
    assert r["sluice_vs_vllm_serve"] == pytest.approx(0.9)
    assert r["rounds"]["sluice_vs_vllm_serve"] == pytest.approx([0.9, 0.9, 0.9])
    assert r["ttft_p50_delta_ms"] == pytest.approx(10)  # deltas 10, 20, 10
    assert r["itl_p50_delta_ms"] == pytest.approx(1)  # deltas 1, 2, 1
    assert "0.90 (0.90, 0.90, 0.90)" in ratios_table({"ratios": {"c32": r}})
