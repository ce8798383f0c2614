"""The live typical-pod mix from the allocator's telemetry events (real TelemetryStore)."""

from __future__ import annotations

import time

from keti_ray.k8s.live_mix import LiveMix
from keti_ray.telemetry import TelemetryStore


def event(t: float, gpu_milli: int, num_gpu: int = 1, op: str = "allocate") -> dict:
    return {
        "time": t, "node": "n1", "op": op, "pod": f"default/p{t}", "policy": "fgd",
        "cpu_milli": 1000, "memory_mib": 1024, "num_gpu": num_gpu, "gpu_milli": gpu_milli,
        "gpu_spec": "", "decision_ms": 0.1, "unallocated_gpu_pct": 50.0,
    }  # fmt: skip


def test_the_mix_follows_recent_allocate_events(tmp_path):
    store = TelemetryStore(tmp_path, writer="allocator")
    now = time.time()
    old = [event(now - 7200 + i, 500) for i in range(50)]  # outside the window
    recent = [event(now - 60 + i * 0.1, 250) for i in range(30)]
    recent += [event(now - 30 + i * 0.1, 1000, 2) for i in range(10)]
    recent += [event(now - 10, 250, op="release")] * 5
    store.push("events", old + recent)
    store.flush()
    applied = []
    mix = LiveMix(tmp_path, applied.append, window_s=3600, min_pods=20)
    typical = mix.refresh(now)
    assert applied == [typical]
    shapes = dict(zip(typical.shapes, typical.weights, strict=True))
    by_gpu = {(s[1], s[2]): w for s, w in shapes.items()}
    assert set(by_gpu) == {(1, 250), (2, 1000)}  # the 500-milli pods are too old
    assert abs(by_gpu[(1, 250)] - 0.75) < 1e-9 and abs(by_gpu[(2, 1000)] - 0.25) < 1e-9
    assert mix.last["pods_seen"] == 40


def test_too_few_events_keep_the_current_mix(tmp_path):
    store = TelemetryStore(tmp_path, writer="allocator")
    now = time.time()
    store.push("events", [event(now - 5, 300) for _ in range(5)])
    store.flush()
    applied = []
    assert LiveMix(tmp_path, applied.append, min_pods=20).refresh(now) is None
    assert LiveMix(tmp_path / "empty", applied.append).refresh(now) is None
    assert applied == []
