"""Allocator events flow into the store, and `keti-ray report` draws them."""

from __future__ import annotations

import subprocess
import sys

from keti_ray.service import AllocationService
from keti_ray.simcluster import simulated_nodes
from keti_ray.telemetry import TelemetryStore

from ..factories import pod


def test_service_events_and_report(tmp_path):
    store = TelemetryStore(tmp_path / "tele", writer="allocator")
    service = AllocationService(simulated_nodes(2), telemetry=store)
    for i in range(20):
        service.allocate(pod(f"p{i}", num=1, milli=250))
    service.release("p3")
    service.push_events()
    assert store.count("events") == 21
    events = store.read("events").to_pylist()
    assert [e["op"] for e in events].count("release") == 1
    assert events[-1]["frag_pct"] is not None and events[0]["policy"] == "fgd"
    agents = TelemetryStore(tmp_path / "tele", writer="agents")
    agents.push(
        "samples",
        [
            {
                "time": float(t),
                "node": "sim-node-00",
                "gpu_uuid": "GPU-a",
                "pod": "p0",
                "sm_pct_granted": 25.0,
                "sm_util_pct": 20.0,
            }
            for t in range(10)
        ],
    )
    agents.flush()
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "keti_ray.cli",
            "report",
            "--telemetry",
            str(tmp_path / "tele"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "allocations: 20" in proc.stdout and "samples: 10" in proc.stdout
    for name in (
        "unallocated_gpu.png",
        "fragmentation.png",
        "decision_latency.png",
        "sm_occupancy.png",
    ):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "releases: 1" in (out / "summary.txt").read_text()
