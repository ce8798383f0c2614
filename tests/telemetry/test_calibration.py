"""Calibration: workload mix from allocator events, saturating throughput fits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from keti_ray.calibration import (
    CalibrationError,
    fit_saturating,
    throughput_curves,
    workload_mix,
)
from keti_ray.telemetry.schema import EVENTS, SAMPLES


def events(rows):
    base = {f: None for f in EVENTS.names}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=EVENTS)


def alloc(t, num, milli, cpu=4000):
    return {
        "time": t,
        "node": "n",
        "op": "allocate",
        "pod": f"p{t}",
        "cpu_milli": cpu,
        "num_gpu": num,
        "gpu_milli": milli,
    }


def test_mix_follows_the_window():
    rows = [alloc(float(i), 1, 1000) for i in range(100)]  # first hour: whole GPUs
    rows += [alloc(3600.0 + i, 1, 250) for i in range(300)]  # then quarter shares
    rows.append({"time": 5000.0, "node": "n", "op": "release", "pod": "p1"})
    mix = workload_mix(events(rows))
    assert mix.pods_seen == 400
    assert dict(zip([s[2] for s in mix.shapes], mix.weights, strict=True)) == pytest.approx(
        {1000: 0.25, 250: 0.75}
    )
    recent = workload_mix(events(rows), since=3600.0)
    assert [s[2] for s in recent.shapes] == [250] and recent.arrivals_per_hour > 1000
    typical = recent.typical()
    assert typical.shapes[0][:3] == (4000, 1, 250)
    pods = recent.sample(50, seed=1)
    assert len(pods) == 50 and all(p.gpu_milli == 250 for p in pods)
    with pytest.raises(CalibrationError, match="no allocate events"):
        workload_mix(events(rows), since=10_000.0)


def test_saturating_fit_recovers_the_curve():
    s = np.array([10, 25, 50, 75, 100, 10, 25, 50, 75, 100], dtype=float)
    true = 800 * s / (s + 40)
    noise = np.random.default_rng(0).normal(0, 2, size=len(s))
    fit = fit_saturating(s, true + noise)
    assert fit.k == pytest.approx(40, rel=0.1) and fit.a == pytest.approx(800, rel=0.05)
    assert fit.r2 > 0.99
    assert fit.relative(50) == pytest.approx((50 / 90) / (100 / 140), rel=0.03)
    with pytest.raises(CalibrationError, match="at least 3 samples"):
        fit_saturating(np.array([50.0, 50.0, 50.0]), np.array([1.0, 1.0, 1.0]))


def test_throughput_curves_per_class():
    base = {f: None for f in SAMPLES.names}
    rows = []
    for pct in (25, 50, 75, 100):
        rows.append(
            {
                **base,
                "time": 1.0,
                "node": "n",
                "gpu_uuid": "g",
                "workload_class": "gemm",
                "sm_pct_granted": float(pct),
                "throughput": float(pct * 8),
            }
        )
        rows.append(
            {
                **base,
                "time": 1.0,
                "node": "n",
                "gpu_uuid": "g",
                "workload_class": "copy",
                "sm_pct_granted": float(pct),
                "throughput": 3000.0 * pct / (pct + 5),
            }
        )
    fits = throughput_curves(pa.Table.from_pylist(rows, schema=SAMPLES))
    assert set(fits) == {"gemm", "copy"}
    assert fits["gemm"].relative(25) == pytest.approx(0.25, abs=0.03)  # compute-bound: linear
    assert fits["copy"].relative(25) > 0.8  # bandwidth-bound: saturates early
