"""The replay protocol on a sample of the default trace, and its tuning rule."""

from __future__ import annotations

import numpy as np
import pytest

from keti_ray.allocators import make_allocator
from keti_ray.cluster import ClusterState
from keti_ray.fragmentation import TypicalPods
from keti_ray.replay import ArrivalBuckets, replay, tune_workload
from keti_ray.trace import load_nodes, load_pods

from .factories import pod


def test_tune_up_reaches_ratio_and_keeps_names_unique():
    pods = [pod(f"p{i}", num=1, milli=500) for i in range(10)] + [pod("c")]
    tuned = tune_workload(pods, capacity_milli=4000, ratio=1.3, seed=1)
    total = sum(p.gpu_request_milli for p in tuned)
    assert 5200 - 500 < total <= 5200
    assert len({p.name for p in tuned}) == len(tuned)
    assert {p.name for p in pods} <= {p.name for p in tuned}  # originals all kept
    assert tuned == tune_workload(pods, capacity_milli=4000, ratio=1.3, seed=1)
    assert tuned != tune_workload(pods, capacity_milli=4000, ratio=1.3, seed=2)


def test_tune_down_drops_pods():
    pods = [pod(f"p{i}", num=1, milli=1000) for i in range(10)]
    tuned = tune_workload(pods, capacity_milli=4000, ratio=1.3, seed=3)
    assert sum(p.gpu_request_milli for p in tuned) == 5000
    with pytest.raises(ValueError, match="tune ratio must be > 0"):
        tune_workload(pods, 4000, 0, 1)


def test_arrival_buckets_average_and_fill_gaps():
    buckets = ArrivalBuckets()
    buckets.add(10.2, 5.0)
    buckets.add(9.8, 7.0)
    buckets.add(12.0, 9.0)
    curve = buckets.curve()
    assert curve[10] == pytest.approx(6.0)
    assert curve[11] == pytest.approx((5.0 + 7.0 + 9.0) / 3)  # empty: neighbours 10 and 12
    assert np.isnan(curve[50])


@pytest.fixture(scope="module")
def sample(openb_dir_module):
    """200 nodes of the openb cluster and the default pod list, tuned to 1.3x."""
    nodes = load_nodes(openb_dir_module / "openb_node_list_gpu_node.csv")[::6]
    pods = load_pods(openb_dir_module / "openb_pod_list_default.csv")
    typical = TypicalPods.from_pods(pods)
    capacity = ClusterState(nodes).total_gpu_milli
    rng = np.random.default_rng(0)
    subset = [pods[i] for i in rng.choice(len(pods), size=len(pods) // 5, replace=False)]
    return nodes, subset, typical, capacity


@pytest.fixture(scope="module")
def openb_dir_module():
    from keti_ray.paths import trace_dir

    try:
        return trace_dir()
    except FileNotFoundError:
        pytest.skip("openb trace not available")


def test_sample_replay_orders_policies_like_the_paper(sample):
    nodes, pods, typical, capacity = sample
    at_130 = {}
    for name in ("random", "bestfit", "fgd"):
        values = []
        for seed in (42, 43):
            workload = tune_workload(pods, capacity, 1.3, seed)
            result = replay(nodes, workload, make_allocator(name, typical, seed), seed, typical)
            curve = result.unallocated_gpu_pct
            assert curve[0] > 99.0  # bucket 0 holds the first offers (< 0.5% arrived)
            assert not np.isnan(curve[100:131]).any()
            assert (np.diff(curve[1:131]) <= 1e-6).all()  # allocation only grows
            assert 0 < result.pods_placed < result.pods_offered
            values.append(result.at(130))
        at_130[name] = np.mean(values)
    assert at_130["fgd"] < at_130["bestfit"] < at_130["random"]


def test_replay_is_deterministic_for_a_seed(sample):
    nodes, pods, typical, capacity = sample
    workload = tune_workload(pods, capacity, 1.3, 7)
    a = replay(nodes, workload, make_allocator("fgd", typical, 7), 7, typical)
    b = replay(nodes, workload, make_allocator("fgd", typical, 7), 7, typical)
    assert np.array_equal(a.unallocated_gpu_pct, b.unallocated_gpu_pct, equal_nan=True)
