"""Calibration: workload mix from allocator events."""

from __future__ import annotations

import pyarrow as pa
import pytest

from keti_ray.calibration import CalibrationError, workload_mix
from keti_ray.telemetry.schema import EVENTS


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
