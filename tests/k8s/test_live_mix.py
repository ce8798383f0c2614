"""The live typical-pod mix from the allocator's telemetry events (real TelemetryStore), and
the service taking it (filter/prioritize and the serving policy score for the new mix)."""

from __future__ import annotations

import time

import pytest

from keti_ray.booking import AllocationService
from keti_ray.cluster import NodeSpec, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.k8s.live_mix import LiveMix
from keti_ray.k8s.runtime import start_live_mix
from keti_ray.telemetry import TelemetryStore
from serve.state import ClusterSource


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


# ---- the service takes the live mix: filter/prioritize score for the pods that come now ----


def shaped(n: int, gpu_milli: int) -> list[PodRequest]:
    return [PodRequest(f"t{gpu_milli}-{i}", 1000, 1024, 1, gpu_milli) for i in range(n)]


def two_nodes() -> AllocationService:
    """Node `part` has a GPU with 750 milli free (a 250 share booked), node `free` a free one."""
    nodes = [NodeSpec("part", 32000, 65536, 1, "A100"), NodeSpec("free", 32000, 65536, 1, "A100")]
    svc = AllocationService(nodes, typical=TypicalPods.from_pods(shaped(10, 1000)))
    svc.allocate(PodRequest("default/first", 1000, 1024, 1, 250), node="part")
    return svc


def top(scores: list[dict]) -> str:
    return max(scores, key=lambda s: s["Score"])["Host"]


def test_set_typical_changes_what_prioritize_prefers():
    svc = two_nodes()
    pod = PodRequest("default/next", 1000, 1024, 1, 250)
    try:
        # whole-GPU pods come: keep the free GPU whole, stack the share on the used one
        assert top(svc.prioritize(pod, ["part", "free"])) == "part"
        assert svc.filter_nodes(pod, ["part", "free", "gone"])[0] == ["part", "free"]
        # 750-milli pods come: 250 more on `part` would leave 500 that no such pod can use
        assert svc.set_typical(TypicalPods.from_pods(shaped(10, 750))) == "fgd"
        scores = svc.prioritize(pod, ["part", "free"])
        assert top(scores) == "free" and {s["Score"] for s in scores} != {10}
        assert svc.allocate(pod, dry_run=True).node == "free"  # the serving policy too
    finally:
        svc.close()


def test_start_live_mix_feeds_the_service_from_its_events(tmp_path):
    store = TelemetryStore(tmp_path, writer="allocator")
    now = time.time()
    store.push("events", [event(now - 30 + i * 0.1, 750) for i in range(30)])
    store.flush()
    svc = two_nodes()
    pod = PodRequest("default/next", 1000, 1024, 1, 250)
    live = start_live_mix(svc, str(tmp_path), period_s=3600)
    try:
        assert live is not None and top(svc.prioritize(pod, ["part", "free"])) == "part"
        assert live.refresh(now) is not None
        assert top(svc.prioritize(pod, ["part", "free"])) == "free"
        assert svc.typical.shapes == ((1000, 1, 750, frozenset()),)
    finally:
        live.stop()
        svc.close()


def test_cluster_source_starts_from_the_telemetry_mix(tmp_path):
    pods_csv = tmp_path / "pods.csv"
    assert ClusterSource(telemetry_dir=str(tmp_path / "none")).typical() is None
    assert not (tmp_path / "none").exists()
    store = TelemetryStore(tmp_path / "t", writer="allocator")
    now = time.time()
    store.push("events", [event(now - 5, 300) for _ in range(5)])  # too few
    assert ClusterSource(telemetry_dir=str(tmp_path / "t")).typical() is None
    store.push("events", [event(now - 60 + i, 500) for i in range(25)])
    typical = ClusterSource(telemetry_dir=str(tmp_path / "t"), pods_csv=str(pods_csv)).typical()
    assert typical is not None
    shapes = dict(zip(typical.shapes, typical.weights, strict=True))
    assert shapes[(1000, 1, 500, frozenset())] == pytest.approx(25 / 30)
