"""`keti-ray up`'s node agents: one per simulated GPU node, with the allocator's GPU UUIDs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from keti_ray.agent import fleet as fleet_mod  # noqa: E402
from keti_ray.podenv import simulated_gpu_uuid  # noqa: E402


@pytest.fixture
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="keti-up-test")
    root = Path(tempfile.mkdtemp(prefix="kup", dir="/tmp"))
    yield root
    for h in fleet_mod._LOCAL_AGENTS:
        ray.get(h.stop.remote(), timeout=30)
        ray.kill(h, no_restart=True)
    fleet_mod._LOCAL_AGENTS.clear()
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def test_start_local_fleet_matches_the_allocators_gpus(local_ray):
    from serve.state import ClusterSource

    source = ClusterSource(sim_nodes=3)
    line = fleet_mod.start_local_fleet(source, max_agents=2, root=local_ray)
    assert line.startswith("2 node agents of 3 GPU nodes")
    specs = [s for s in source.nodes() if s.num_gpus > 0][:2]
    for spec, handle in zip(specs, fleet_mod._LOCAL_AGENTS, strict=True):
        info = ray.get(handle.info.remote(), timeout=30)
        assert info["node_id"] == spec.name
        assert [g["uuid"] for g in info["gpus"]] == [
            simulated_gpu_uuid(spec.name, i) for i in range(spec.num_gpus)
        ]
        assert info["plugins"]["keti.re.kr/gpu-pct"]["socket"].startswith(str(local_ray))
