"""Calibration from telemetry: the live workload mix.

The allocator's `allocate` events give the pod shapes and their arrival rate; the most
frequent shapes become FGD's typical pods (and the learned allocator's typical-pod mix) and
the training workload of a retrain. (A throughput-vs-SM-share fit used to live here; nothing
fed it and no decision read it, so it was removed.)
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
