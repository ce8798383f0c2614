"""Fixtures for the RL tests: a small slice of the openb cluster and the default pod list."""

from __future__ import annotations

import pytest

from keti_ray.fragmentation import TypicalPods
from keti_ray.paths import trace_dir
from keti_ray.rl.env import EnvSettings, Workload
from keti_ray.trace import load_nodes, load_pods


@pytest.fixture(scope="session")
def openb():
    try:
        root = trace_dir()
    except FileNotFoundError:
        pytest.skip("openb trace not available")
    nodes = load_nodes(root / "openb_node_list_gpu_node.csv")
    pods = load_pods(root / "openb_pod_list_default.csv")
    return nodes, pods, TypicalPods.from_pods(pods)


@pytest.fixture
def small_settings(openb):
    nodes, pods, typical = openb
    return EnvSettings(
        nodes=nodes,
        workloads=[Workload("default", pods, typical)],
        num_nodes=30,
        k=8,
        random_extra=2,
    )
