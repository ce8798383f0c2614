"""FGD's fragmentation measure on hand-computed cases, and typical-pod selection."""

from __future__ import annotations

import numpy as np
import pytest

from keti_ray.fragmentation import FragmentationModel, TypicalPods, fragmentation_pct

from .factories import cluster, pod

ANY = frozenset()


def frag(typical, gpu_free, cpu_free, model="A", models=("A", "B")):
    fm = FragmentationModel(typical, list(models))
    row = np.zeros((1, 8), dtype=np.int64)
    row[0, : len(gpu_free)] = gpu_free
    code = np.array([list(models).index(model)])
    return float(fm.node_fragmentation(row, np.array([cpu_free]), code)[0])


TYPICAL = TypicalPods.from_shapes(
    [(1000, 1, 500, ANY), (2000, 0, 0, ANY), (4000, 2, 1000, ANY)], [0.5, 0.25, 0.25]
)


def test_hand_computed_fragmentation():
    # 1x500 fits (GPU0) -> only GPU1's 300 is fragment; CPU-only and 2x1000 count all 1300.
    assert frag(TYPICAL, [1000, 300], 10_000) == pytest.approx(0.5 * 300 + 0.25 * 1300 * 2)
    # Without CPU for the 1x500 shape every typical pod sees all 1300 milli as fragment.
    assert frag(TYPICAL, [1000, 300], 500) == pytest.approx(1300)
    # Two whole GPUs: 1x500 and 2x1000 both fit, nothing below their share.
    assert frag(TYPICAL, [1000, 1000], 10_000) == pytest.approx(0.25 * 2000)
    # Fully used node: nothing free, nothing fragmented.
    assert frag(TYPICAL, [0, 0], 10_000) == 0


def test_model_constraint_counts_everything_as_fragment():
    typical = TypicalPods.from_shapes([(0 + 1, 1, 200, frozenset({"B"}))], [1.0])
    assert frag(typical, [1000, 100], 10_000, model="A") == pytest.approx(1100)
    assert frag(typical, [1000, 100], 10_000, model="B") == pytest.approx(100)


def test_typical_pods_cover_95_percent_and_renormalise():
    pods = (
        [pod(f"a{i}", cpu=1000, num=1, milli=500) for i in range(60)]
        + [pod(f"b{i}", cpu=2000) for i in range(30)]
        + [pod(f"c{i}", cpu=3000, num=1, milli=1000) for i in range(6)]
        + [pod(f"d{i}", cpu=4000, num=2, milli=1000) for i in range(4)]
    )
    typical = TypicalPods.from_pods(pods)
    # 60 + 30 = 90% < 95%, + 6 = 96% >= 95%: three shapes, weights renormalised over 96.
    assert len(typical) == 3
    assert typical.weights.tolist() == pytest.approx([60 / 96, 30 / 96, 6 / 96])
    assert typical.shapes[1] == (2000, 0, 0, ANY)


def test_cluster_fragmentation_pct():
    state = cluster(("a", 10_000, 1024, 2, "A"), ("b", 10_000, 1024, 2, "A"))
    typical = TypicalPods.from_shapes([(1000, 1, 500, ANY)], [1.0])
    fm = FragmentationModel(typical, state.models)
    assert fragmentation_pct(state, fm) == 0
    state.gpu_free[0] = [300, 300, 0, 0, 0, 0, 0, 0]
    assert fragmentation_pct(state, fm) == pytest.approx(100 * 600 / 4000)
