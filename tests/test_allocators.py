"""Each allocator on small clusters whose right answer follows from reasoning."""

from __future__ import annotations

import numpy as np
import pytest

from keti_ray.allocators import HEURISTICS, make_allocator
from keti_ray.allocators.fgd import fgd_score
from keti_ray.cluster import Placement
from keti_ray.fragmentation import TypicalPods

from .factories import cluster, pod

ANY = frozenset()
WHOLE_GPU_MIX = TypicalPods.from_shapes([(1000, 1, 1000, ANY)], [1.0])


def half_used_and_empty():
    """Node a: GPU0 has 500 milli free; node b: two free GPUs."""
    state = cluster(("a", 16000, 65536, 2, "T4"), ("b", 16000, 65536, 2, "T4"))
    state.allocate(pod("seed", num=1, milli=500), Placement(0, (0,), (500,)))
    return state


def test_fgd_fills_the_half_used_gpu():
    # a/GPU0: frag 500 -> 0 (score 62); a/GPU1 or b: frag grows by 500 (score 37).
    state = half_used_and_empty()
    placement = make_allocator("fgd", WHOLE_GPU_MIX, seed=1).place(
        state, pod("p", num=1, milli=500)
    )
    assert placement == Placement(0, (0,), (500,))


def test_fgd_score_matches_reference_formula():
    assert fgd_score(np.array([-500, 500, 0, -8000])).tolist() == [62, 37, 50, 99]


def test_fgd_keeps_whole_gpus_for_whole_gpu_pods():
    # A 300 share: on a's half-free GPU it leaves 200 (a whole GPU still free); on b it
    # breaks a whole GPU, so FGD prefers a, GPU0.
    state = half_used_and_empty()
    placement = make_allocator("fgd", WHOLE_GPU_MIX, seed=3).place(
        state, pod("p", num=1, milli=300)
    )
    assert placement == Placement(0, (0,), (300,))


def test_bestfit_picks_the_node_with_least_left():
    state = cluster(("big", 96000, 65536, 8, "G2"), ("small", 96000, 65536, 2, "G2"))
    state.allocate(pod("x", num=1, milli=1000), Placement(0, (0,), (1000,)))
    placement = make_allocator("bestfit", seed=0).place(state, pod("p", num=1, milli=1000))
    assert placement == Placement(1, (0,), (1000,))


def test_bestfit_picks_tightest_gpu_for_shares():
    state = cluster(("a", 16000, 65536, 3, "T4"))
    state.allocate(pod("x", num=1, milli=200), Placement(0, (0,), (200,)))
    state.allocate(pod("y", num=1, milli=600), Placement(0, (2,), (600,)))
    placement = make_allocator("bestfit", seed=0).place(state, pod("p", num=1, milli=300))
    assert placement == Placement(0, (2,), (300,))  # 400 free is the tightest that fits


def test_packing_prefers_used_gpu_then_used_node():
    state = half_used_and_empty()
    packing = make_allocator("packing", seed=0)
    # shared pod on a used GPU scores 95; an empty node scores 31.
    assert packing.place(state, pod("s", num=1, milli=300)) == Placement(0, (0,), (300,))
    # whole GPU on the used node (case 2: 49) beats the empty node (31).
    assert packing.place(state, pod("w", num=1, milli=1000)) == Placement(0, (1,), (1000,))


def test_clustering_keeps_same_kind_together():
    state = cluster(
        ("a", 16000, 65536, 4, "T4"), ("b", 16000, 65536, 4, "T4"), ("c", 16000, 65536, 4, "T4")
    )
    state.allocate(pod("shared", num=1, milli=200), Placement(0, (0,), (200,)))
    state.allocate(pod("whole", num=1, milli=1000), Placement(1, (0,), (1000,)))
    clustering = make_allocator("clustering", seed=0)
    assert clustering.place(state, pod("s", num=1, milli=300)).node == 0
    assert clustering.place(state, pod("w", num=1, milli=1000)).node == 1
    assert clustering.place(state, pod("w2", num=2, milli=1000)).node == 2  # empty beats other-kind


def test_dotprod_picks_smallest_dot_product():
    state = cluster(("eight", 16000, 65536, 8, "G2"), ("two", 16000, 65536, 2, "G2"))
    placement = make_allocator("dotprod", seed=0).place(state, pod("p", num=1, milli=1000))
    assert placement.node == 1


def test_random_only_picks_feasible_nodes_and_uses_all_of_them():
    state = cluster(
        ("a", 4000, 4096, 1, "T4"), ("b", 4000, 4096, 1, "T4"), ("c", 100, 4096, 1, "T4")
    )
    chosen = {
        make_allocator("random", seed=s).place(state, pod("p", cpu=1000)).node for s in range(40)
    }
    assert chosen == {0, 1}


@pytest.mark.parametrize("name", HEURISTICS)
def test_nothing_fits_returns_none_and_changes_nothing(name):
    state = cluster(("a", 4000, 4096, 2, "T4"))
    before = state.gpu_free.copy()
    allocator = make_allocator(name, WHOLE_GPU_MIX, seed=0)
    assert allocator.place(state, pod("p", num=4, milli=1000)) is None
    assert allocator.place(state, pod("q", num=1, milli=100, spec=["A100"])) is None
    assert allocator.place(state, pod("r", cpu=5000)) is None
    assert np.array_equal(before, state.gpu_free) and not state.placements


@pytest.mark.parametrize("name", HEURISTICS)
def test_every_placement_is_valid_on_a_busy_cluster(name):
    rng = np.random.default_rng(7)
    state = cluster(
        *[(f"n{i}", 32000, 131072, int(g), "T4") for i, g in enumerate([1, 2, 4, 8] * 3)]
    )
    allocator = make_allocator(name, WHOLE_GPU_MIX, seed=1)
    for i in range(300):
        num = int(rng.choice([0, 1, 1, 1, 2]))
        milli = 0 if num == 0 else (1000 if num > 1 else int(rng.choice([250, 500, 1000])))
        p = pod(f"p{i}", cpu=int(rng.integers(500, 4000)), mem=1024, num=num, milli=milli)
        placement = allocator.place(state, p)
        if placement is not None:
            state.allocate(p, placement)  # raises if the allocator broke an invariant
    assert (state.gpu_free >= 0).all() and (state.cpu_free >= 0).all()
    assert 0 < len(state.placements) < 300


def test_ties_go_to_the_same_node_for_a_seed():
    state = cluster(*[(f"n{i}", 8000, 8192, 1, "T4") for i in range(20)])
    picks = [
        make_allocator("packing", seed=5).place(state, pod("p", num=1, milli=1000)).node
        for _ in range(3)
    ]
    assert len(set(picks)) == 1
    other = {
        make_allocator("packing", seed=s).place(state, pod("p", num=1, milli=1000)).node
        for s in range(10)
    }
    assert len(other) > 1


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="accepted: random, dotprod"):
        make_allocator("worstfit")


def test_fgd_score_ignores_float_noise_around_zero():
    noise = np.array([1e-13, -1e-13, 0.0])
    assert fgd_score(noise).tolist() == [50, 50, 50]
