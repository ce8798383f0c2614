"""Cluster model invariants: allocate/release keep capacity, and violations are named."""

from __future__ import annotations

import numpy as np
import pytest

from keti_ray.cluster import AllocationError, ModelError, NodeSpec, Placement, PodRequest

from .factories import cluster, pod


def test_allocate_and_release_restore_capacity():
    state = cluster(("a", 8000, 8192, 2, "T4"))
    p = pod("p", cpu=2000, mem=1024, num=1, milli=300)
    state.allocate(p, Placement(0, (1,), (300,)))
    assert state.gpu_free[0].tolist()[:2] == [1000, 700]
    assert state.cpu_free[0] == 6000 and state.mem_free[0] == 7168
    assert state.unallocated_gpu_pct() == pytest.approx(85.0)
    assert state.release("p") == Placement(0, (1,), (300,))
    assert state.gpu_free[0].tolist()[:2] == [1000, 1000]
    assert state.cpu_free[0] == 8000 and state.mem_free[0] == 8192
    assert state.release("p") is None  # idempotent


@pytest.mark.parametrize(
    ("request_pod", "placement", "message"),
    [
        (pod("big", cpu=9000), Placement(0), "cpu_milli free"),
        (pod("mem", mem=9000), Placement(0), "memory_mib free"),
        (pod("g", num=1, milli=500), Placement(0, (2,), (500,)), "no GPU index 2"),
        (pod("g2", num=1, milli=500), Placement(0), "asks for 1 GPU"),
        (pod("g3", num=1, milli=500), Placement(0, (0,), (400,)), "pod asks 500"),
        (pod("m", num=1, milli=500, spec=["V100M16"]), Placement(0, (0,), (500,)), "GPU model"),
        (pod("n", cpu=1), Placement(5), "node index 5"),
    ],
)
def test_invalid_placements_are_refused_and_change_nothing(request_pod, placement, message):
    state = cluster(("a", 8000, 8192, 2, "T4"))
    before = (state.cpu_free.copy(), state.mem_free.copy(), state.gpu_free.copy())
    with pytest.raises(AllocationError, match=message):
        state.allocate(request_pod, placement)
    assert np.array_equal(before[0], state.cpu_free)
    assert np.array_equal(before[1], state.mem_free)
    assert np.array_equal(before[2], state.gpu_free)
    assert not state.placements


def test_no_gpu_goes_over_1000_milli():
    state = cluster(("a", 8000, 8192, 1, "T4"))
    state.allocate(pod("p1", num=1, milli=600), Placement(0, (0,), (600,)))
    with pytest.raises(AllocationError, match="has 400 milli free, needs 600"):
        state.allocate(pod("p2", num=1, milli=600), Placement(0, (0,), (600,)))
    assert state.gpu_free[0, 0] == 400


def test_a_pod_is_placed_once():
    state = cluster(("a", 8000, 8192, 2, "T4"))
    state.allocate(pod("p", cpu=100), Placement(0))
    with pytest.raises(AllocationError, match="already placed"):
        state.allocate(pod("p", cpu=100), Placement(0))
    assert state.cpu_free[0] == 7900


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cpu_milli": -1}, "cpu_milli"),
        ({"memory_mib": "x"}, "memory_mib"),
        ({"num_gpu": 9, "gpu_milli": 1000}, "num_gpu"),
        ({"num_gpu": 1, "gpu_milli": 1200}, "gpu_milli"),
        ({"num_gpu": 2, "gpu_milli": 500}, "gpu_milli"),
        ({"num_gpu": 0, "gpu_milli": 100}, "gpu_milli"),
        ({"num_gpu": 1, "gpu_milli": 0}, "gpu_milli"),
    ],
)
def test_bad_requests_name_the_field(kwargs, field):
    base = {"cpu_milli": 1, "memory_mib": 1, "num_gpu": 0, "gpu_milli": 0}
    with pytest.raises(ModelError) as info:
        PodRequest("bad", **{**base, **kwargs})
    assert info.value.field == field
    assert field in str(info.value)


def test_feasibility_checks_cpu_memory_share_and_model():
    state = cluster(
        ("t4", 8000, 8192, 2, "T4"),
        ("v100", 8000, 8192, 2, "V100M16"),
        ("cpu", 64000, 65536, 0, ""),
    )
    assert state.feasible_nodes(pod("c", cpu=20000)).tolist() == [False, False, True]
    assert state.feasible_nodes(pod("g", num=2, milli=1000)).tolist() == [True, True, False]
    assert state.feasible_nodes(pod("s", num=1, milli=100, spec=["T4"])).tolist() == [
        True,
        False,
        False,
    ]
    state.allocate(pod("x", num=1, milli=700), Placement(0, (0,), (700,)))
    assert state.feasible_nodes(pod("g", num=2, milli=1000)).tolist() == [False, True, False]
    assert state.feasible_nodes(pod("s", num=1, milli=300)).tolist() == [True, True, False]
    assert state.feasible_nodes(pod("m", mem=9000)).tolist() == [False, False, True]


def test_node_spec_validation():
    with pytest.raises(ModelError, match="num_gpus must be 0-8"):
        NodeSpec("n", 1, 1, 9, "T4")
    with pytest.raises(ModelError, match="needs a GPU model"):
        NodeSpec("n", 1, 1, 1, "")
    with pytest.raises(ModelError, match="appears more than once"):
        cluster(("a", 1, 1, 0, ""), ("a", 1, 1, 0, ""))
