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


@pytest.fixture(scope="session")
def every_20th_node_csv(tmp_path_factory) -> str:
    """A node list of every 20th openb GPU node (61 nodes): full replays in seconds."""
    try:
        source = trace_dir() / "openb_node_list_gpu_node.csv"
    except FileNotFoundError:
        pytest.skip("openb trace not available")
    lines = source.read_text().splitlines()
    path = tmp_path_factory.mktemp("every_20th") / "nodes.csv"
    path.write_text("\n".join([lines[0], *lines[1::20]]) + "\n")
    return str(path)
