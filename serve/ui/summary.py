"""The operator's headline numbers, read back from the allocator's public views.

Why from the metrics text: the service already exports these quantities for Prometheus
(CONTRACTS §5). Reading the same samples keeps one source per number, so `/ui` and the
Grafana dashboard never disagree, and the page needs no new method on the service facade.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

DECISIONS = "keti_allocator_decisions_total"
LATENCY = "keti_allocator_decision_duration_seconds"
UNALLOCATED = "keti_cluster_unallocated_gpu_ratio"
FRAGMENTATION = "keti_cluster_fragmentation_ratio"
PODS_PLACED = "keti_cluster_pods_placed"
NEEDED = (DECISIONS, LATENCY, UNALLOCATED, FRAGMENTATION, PODS_PLACED)
REFUSED_OUTCOMES = ("nofit", "refused")
LATENCY_WINDOW_S = 60.0

Samples = dict[str, list[tuple[dict[str, str], float]]]
Buckets = list[tuple[float, float]]  # (upper bound `le`, cumulative count), ascending


def read_samples(text: str | bytes) -> Samples:
    """Prometheus text -> sample name -> [(labels, value)] (`_total`, `_bucket` kept)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def exported_names(samples: Samples) -> set[str]:
    """The metric names a scrape shows: sample names plus the histogram family names."""
    names = set(samples)
    for name in list(names):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                names.add(name[: -len(suffix)])
    return names


def histogram_buckets(samples: Samples, name: str) -> Buckets:
    """Cumulative buckets of a histogram, summed over its label sets."""
    counts: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        le = float(labels["le"])
        counts[le] = counts.get(le, 0.0) + value
    return sorted(counts.items())


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket that holds rank q*total;
    a rank in the +Inf bucket answers the largest finite bound. None with no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            if cumulative == below:
                return le
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


def bucket_delta(now: Buckets, before: Buckets) -> Buckets:
    """Observations between two snapshots of the same (monotonic) histogram."""
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in now]


class LatencyWindow:
    """Decision latency over the last minute: keeps histogram snapshots of the scrapes this
    process made. Until a minute has passed (or when nothing was decided in it) the
    quantiles are those since the allocator started, and the answer says so."""

    def __init__(self, window_s: float = LATENCY_WINDOW_S) -> None:
        self.window_s = window_s
        self._snapshots: deque[tuple[float, Buckets]] = deque()
        self._lock = threading.Lock()

    def quantiles(self, buckets: Buckets, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._snapshots.append((now, buckets))
            while len(self._snapshots) > 2 and self._snapshots[1][0] <= now - self.window_s:
                self._snapshots.popleft()
            start, base = self._snapshots[0]
        window = bucket_delta(buckets, base) if now - start >= self.window_s else []
        label = f"last {self.window_s:.0f} s"
        if not window or window[-1][1] <= 0:
            window, label = buckets, "since start"
        p50, p99 = histogram_quantile(0.5, window), histogram_quantile(0.99, window)
        return {
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "window": label,
        }


def _one(samples: Samples, name: str) -> float | None:
    values = [v for _, v in samples.get(name, [])]
    return sum(values) if values else None


def _pct(ratio: float | None) -> float | None:
    return None if ratio is None else round(100.0 * ratio, 2)


def summarize(health: Mapping, metrics_text: str | bytes, window: LatencyWindow) -> dict:
    """The page's headline numbers from `health()` and the `/metrics` text."""
    samples = read_samples(metrics_text)
    outcomes: dict[str, float] = {}
    for labels, value in samples.get(DECISIONS, []):
        outcome = labels.get("outcome", "")
        outcomes[outcome] = outcomes.get(outcome, 0.0) + value
    placed = _one(samples, PODS_PLACED)
    names = exported_names(samples)
    return {
        "policy": health.get("policy"),
        "policy_error": health.get("policy_error"),
        "nodes": health.get("nodes"),
        "gpus": health.get("gpus"),
        "unallocated_gpu_pct": _pct(_one(samples, UNALLOCATED)),
        "fragmentation_pct": _pct(_one(samples, FRAGMENTATION)),
        "pods_placed": None if placed is None else int(placed),
        "decisions": {k: int(v) for k, v in sorted(outcomes.items())},
        "refused": int(sum(outcomes.get(o, 0.0) for o in REFUSED_OUTCOMES)),
        "latency": window.quantiles(histogram_buckets(samples, LATENCY)),
        "missing_metrics": [n for n in NEEDED if n not in names],
        "time": time.time(),
    }
