"""Calibration from telemetry: the live workload mix, and throughput as a function of SM share.

(a) The allocator's `allocate` events give the pod shapes and their arrival rate; the most
    frequent shapes become FGD's typical pods and the training workload of a retrain.
(b) Node samples that carry a workload class, the SM share granted and a throughput give,
    per class, a saturating fit t(s) = a * s / (s + k): near-linear for small shares, flat
    once the class cannot use more SMs. The simulator uses it to price a share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from keti_ray.cluster import PodRequest
from keti_ray.fragmentation import Shape, TypicalPods


@dataclass(frozen=True)
class WorkloadMix:
    """Pod shapes with their frequencies and the observed arrival rate."""

    shapes: tuple[Shape, ...]
    weights: np.ndarray
    arrivals_per_hour: float
    pods_seen: int

    def typical(self, popularity: float = 0.95) -> TypicalPods:
        counts = np.round(self.weights * self.pods_seen).astype(int)
        pods = [
            PodRequest(f"mix-{i}-{j}", s[0], 0, s[1], s[2], s[3])
            for i, (s, c) in enumerate(zip(self.shapes, counts, strict=True))
            for j in range(max(int(c), 1))
        ]
        return TypicalPods.from_pods(pods, popularity)

    def sample(self, count: int, seed: int, memory_mib: int = 1024) -> list[PodRequest]:
        """`count` pods drawn from the mix (for training and held-out replays)."""
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(self.shapes), size=count, p=self.weights)
        return [
            PodRequest(
                f"synthetic-{seed}-{i}", *self.shapes[k][:1], memory_mib, *self.shapes[k][1:]
            )
            for i, k in enumerate(picks)
        ]

    def as_dict(self) -> dict:
        return {
            "shapes": [
                {
                    "cpu_milli": s[0],
                    "num_gpu": s[1],
                    "gpu_milli": s[2],
                    "gpu_spec": sorted(s[3]),
                    "weight": round(float(w), 6),
                }
                for s, w in zip(self.shapes, self.weights, strict=True)
            ],
            "arrivals_per_hour": round(self.arrivals_per_hour, 3),
            "pods_seen": self.pods_seen,
        }


class CalibrationError(ValueError):
    """Not enough telemetry to calibrate; the message says what is missing."""


def workload_mix(events: pa.Table, since: float | None = None) -> WorkloadMix:
    """The mix of `allocate` events (optionally only those at or after `since`)."""
    rows = [
        r
        for r in events.to_pylist()
        if r["op"] == "allocate"
        and (since is None or r["time"] >= since)
        and r["num_gpu"] is not None
    ]
    if not rows:
        raise CalibrationError("no allocate events in the telemetry window; run workloads first")
    counts = Counter(
        (
            r["cpu_milli"] or 0,
            r["num_gpu"],
            r["gpu_milli"] or 0,
            frozenset(s for s in (r["gpu_spec"] or "").split("|") if s),
        )
        for r in rows
    )
    shapes = tuple(counts)
    weights = np.array([counts[s] for s in shapes], dtype=float)
    times = [r["time"] for r in rows]
    span_h = max((max(times) - min(times)) / 3600.0, 1e-9)
    rate = len(rows) / span_h if len(rows) > 1 else 0.0
    return WorkloadMix(shapes, weights / weights.sum(), rate, len(rows))


@dataclass(frozen=True)
class SaturatingFit:
    """t(s) = a * s / (s + k) for SM share s in percent."""

    a: float
    k: float
    r2: float
    samples: int

    def __call__(self, sm_pct: float | np.ndarray) -> float | np.ndarray:
        s = np.asarray(sm_pct, dtype=float)
        return self.a * s / (s + self.k)

    def relative(self, sm_pct: float) -> float:
        """Throughput at `sm_pct` as a share of the whole GPU's."""
        return float(self(sm_pct) / self(100.0))


def fit_saturating(sm_pct: np.ndarray, throughput: np.ndarray) -> SaturatingFit:
    """Least squares over k on a log grid; `a` has a closed form for each k."""
    s = np.asarray(sm_pct, dtype=float)
    t = np.asarray(throughput, dtype=float)
    if len(s) < 3 or len(np.unique(s)) < 2:
        raise CalibrationError("a throughput fit needs at least 3 samples at 2 or more SM shares")
    best = None
    for k in np.geomspace(0.5, 5000, 400):
        x = s / (s + k)
        a = float(x @ t / (x @ x))
        sse = float(((a * x - t) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, a, k)
    sse, a, k = best
    sst = float(((t - t.mean()) ** 2).sum()) or 1e-12
    return SaturatingFit(a=a, k=float(k), r2=1 - sse / sst, samples=len(s))


def throughput_curves(samples: pa.Table, min_samples: int = 3) -> dict[str, SaturatingFit]:
    """Per workload class, the fit of throughput against the SM share granted."""
    by_class: dict[str, list[tuple[float, float]]] = {}
    for r in samples.to_pylist():
        if r["workload_class"] and r["sm_pct_granted"] and r["throughput"] is not None:
            by_class.setdefault(r["workload_class"], []).append(
                (r["sm_pct_granted"], r["throughput"])
            )
    fits = {}
    for name, points in by_class.items():
        if len(points) >= min_samples and len({p[0] for p in points}) >= 2:
            arr = np.array(points)
            fits[name] = fit_saturating(arr[:, 0], arr[:, 1])
    return fits
