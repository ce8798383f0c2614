"""The /ui headline numbers from the metrics text: Prometheus' histogram_quantile rule, the
one-minute latency window, and the summary from a registry that exports CONTRACTS §5 names."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serve.ui.summary import (
    LatencyWindow,
    histogram_buckets,
    histogram_quantile,
    read_samples,
    summarize,
)

INF = float("inf")


@pytest.mark.parametrize(
    ("q", "buckets", "want"),
    [
        (0.5, [(0.001, 0.0), (0.002, 10.0), (INF, 10.0)], 0.0015),  # midway in (1, 2] ms
        (0.99, [(0.001, 50.0), (0.01, 100.0), (INF, 100.0)], 0.001 + 0.009 * 49 / 50),
        (0.5, [(0.001, 0.0), (INF, 4.0)], 0.001),  # in +Inf: the largest finite bound
        (0.5, [(0.001, 0.0), (INF, 0.0)], None),  # nothing observed
        (0.25, [(0.004, 4.0), (INF, 4.0)], 0.001),  # first bucket starts at 0
    ],
)
def test_histogram_quantile_follows_prometheus(q, buckets, want):
    got = histogram_quantile(q, buckets)
    assert got == pytest.approx(want) if want is not None else got is None


def registry_text(latencies: list[float]) -> bytes:
    r = CollectorRegistry()
    decisions = Counter("keti_allocator_decisions", "", ["policy", "outcome"], registry=r)
    decisions.labels("fgd", "placed").inc(7)
    decisions.labels("ppo@abc", "placed").inc(3)
    decisions.labels("fgd", "nofit").inc(2)
    decisions.labels("fgd", "refused").inc(1)
    decisions.labels("fgd", "dry_run").inc(5)
    h = Histogram(
        "keti_allocator_decision_duration_seconds", "", buckets=(0.001, 0.01, 0.1), registry=r
    )
    for s in latencies:
        h.observe(s)
    Gauge("keti_cluster_unallocated_gpu_ratio", "", registry=r).set(0.625)
    Gauge("keti_cluster_fragmentation_ratio", "", registry=r).set(0.125)
    Gauge("keti_cluster_pods_placed", "", registry=r).set(9)
    return generate_latest(r)


def test_summary_reads_the_contract_metrics():
    health = {"policy": "ppo@abc", "policy_error": None, "nodes": 3, "gpus": 14}
    s = summarize(health, registry_text([0.0005] * 9 + [0.05]), LatencyWindow())
    assert s["missing_metrics"] == []
    assert (s["unallocated_gpu_pct"], s["fragmentation_pct"], s["pods_placed"]) == (62.5, 12.5, 9)
    assert s["decisions"] == {"dry_run": 5, "nofit": 2, "placed": 10, "refused": 1}
    assert s["refused"] == 3 and s["policy"] == "ppo@abc"
    # 10 observations: ranks 5 and 9.9 fall in (0, 1 ms] and (10, 100 ms]
    assert s["latency"]["p50_ms"] == pytest.approx(5 / 9 * 1.0, rel=1e-3)
    assert s["latency"]["p99_ms"] == pytest.approx(10 + 90 * 0.9, rel=1e-3)
    assert s["latency"]["window"] == "since start"


def test_summary_names_metrics_the_allocator_does_not_export():
    s = summarize({"policy": "fgd"}, b"# nothing here\n", LatencyWindow())
    assert "keti_cluster_unallocated_gpu_ratio" in s["missing_metrics"]
    assert s["unallocated_gpu_pct"] is None and s["latency"]["p50_ms"] is None


def test_latency_window_takes_the_last_minute():
    window = LatencyWindow(window_s=60)
    slow = histogram_buckets(
        read_samples(registry_text([0.05] * 100)), "keti_allocator_decision_duration_seconds"
    )
    assert window.quantiles(slow, now=0.0)["window"] == "since start"
    assert window.quantiles(slow, now=30.0)["window"] == "since start"
    # then 100 fast decisions: the last minute holds only them
    mixed = histogram_buckets(
        read_samples(registry_text([0.05] * 100 + [0.0005] * 100)),
        "keti_allocator_decision_duration_seconds",
    )
    recent = window.quantiles(mixed, now=61.0)
    assert recent["window"] == "last 60 s"
    assert recent["p99_ms"] <= 1.0  # the slow hundred are older than the window
    idle = window.quantiles(mixed, now=200.0)  # nothing decided in the last minute
    assert idle["window"] == "since start" and idle["p99_ms"] > 10
