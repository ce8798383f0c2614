"""Whole-GPU hole features (Sum-of-Squares at node level) and continuing a search that lacked
them. The expected values are counted by hand from the cluster each test builds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from keti_ray.cluster import ClusterState, NodeSpec, Placement, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.rl.candidates import CANDIDATE_FEATURES, CandidateGenerator
from keti_ray.rl.pod_groups import POD_GROUPS
from keti_ray.rl.search import (
    SEARCHED,
    SHARED_ONLY,
    SearchSettings,
    continued_scales,
    full_weights,
    new_features,
    run_search,
    start_coordinates,
    weights_report,
)
from tests.factories import tiny_search_settings

HOLES = ("hole_count_before", "hole_count_after", "breaks_free_node")
TYPICAL = TypicalPods.from_shapes(
    [(8000, 1, 1000, frozenset()), (16000, 2, 1000, frozenset()), (4000, 1, 500, frozenset())],
    [0.5, 0.3, 0.2],
)


def _cluster() -> ClusterState:
    """A, B: 8 GPUs all free; C: 8 GPUs, 2 free; D: 4 GPUs all free; E: CPU only."""
    specs = [
        NodeSpec(n, 96000, 393216, g, "V100M32" if g else "")
        for n, g in zip("ABCDE", (8, 8, 8, 4, 0), strict=True)
    ]
    state = ClusterState(specs)
    six = PodRequest("six", 1000, 1024, num_gpu=6, gpu_milli=1000)
    state.allocate(six, Placement(node=2, gpus=tuple(range(6)), milli=(1000,) * 6))
    return state


def _features_by_node(state: ClusterState, pod: PodRequest) -> dict[str, dict[str, float]]:
    cands = CandidateGenerator(TYPICAL, k=8, random_extra=0, seed=1).candidates(state, pod)
    assert cands is not None
    out = {}
    for slot in range(cands.size):
        name = "ABCDE"[int(cands.nodes[slot])]
        row = cands.features[slot]
        out[name] = {f: float(row[CANDIDATE_FEATURES.index(f)]) for f in HOLES}
    return out


def test_a_two_gpu_pod_sees_how_common_each_nodes_hole_is_before_and_after():
    feats = _features_by_node(_cluster(), PodRequest("two", 16000, 1024, num_gpu=2, gpu_milli=1000))
    # 4 GPU nodes; whole free GPUs per node: A 8, B 8, C 2, D 4 (E has no GPU: not counted).
    assert feats["A"] == pytest.approx(
        {"hole_count_before": 2 / 4, "hole_count_after": 0 / 4, "breaks_free_node": 1.0}
    )
    assert feats["C"] == pytest.approx(
        {"hole_count_before": 1 / 4, "hole_count_after": 0 / 4, "breaks_free_node": 0.0}
    )
    assert feats["D"] == pytest.approx(  # left with 2 free, as C has now
        {"hole_count_before": 1 / 4, "hole_count_after": 1 / 4, "breaks_free_node": 1.0}
    )
    assert "E" not in feats


def test_a_shared_pod_breaks_a_hole_only_where_it_takes_a_whole_gpu():
    state = _cluster()
    half = PodRequest("half", 4000, 1024, num_gpu=1, gpu_milli=500)
    state.allocate(half, Placement(node=3, gpus=(0,), milli=(500,)))  # D: 3 whole free now
    feats = _features_by_node(state, PodRequest("s", 4000, 1024, num_gpu=1, gpu_milli=300))
    # D's chosen GPU is the half-used one (FGD packs the gap): its whole count stays 3.
    assert feats["D"]["breaks_free_node"] == 0.0
    assert feats["D"]["hole_count_before"] == feats["D"]["hole_count_after"] == 1 / 4
    assert feats["A"] == pytest.approx(  # 8 -> 7: no node has 7 whole free GPUs
        {"hole_count_before": 2 / 4, "hole_count_after": 0.0, "breaks_free_node": 1.0}
    )


def _old_report(weights: np.ndarray, scales: dict[str, float]) -> dict:
    """A report of a search from before the hole features: neither weights nor spreads."""
    keep = [CANDIDATE_FEATURES[i] for i in SEARCHED if CANDIDATE_FEATURES[i] not in HOLES]
    named = weights_report(weights)
    for row in named.values():
        for f in HOLES:
            del row[f]
    return {
        "weights": named,
        "feature_names": keep,
        "feature_scales": [scales[f] for f in keep],
        "curve": [{}],
    }


def test_a_search_continued_from_before_the_hole_features_starts_from_its_policy():
    rng = np.random.default_rng(4)
    scales = {CANDIDATE_FEATURES[i]: float(rng.uniform(0.1, 1.0)) for i in SEARCHED}
    old = rng.normal(0.0, 1.0, (len(POD_GROUPS), len(CANDIDATE_FEATURES)))
    old[:, [CANDIDATE_FEATURES.index(f) for f in HOLES]] = 0.0
    report = _old_report(old, scales)
    assert new_features(report) == list(HOLES)
    measured = np.full(len(SEARCHED), 0.25)
    units = continued_scales(report, lambda: measured)
    for pos, f in enumerate(SEARCHED):  # the report's units kept; only the new ones measured
        name = CANDIDATE_FEATURES[f]
        assert units[pos] == (0.25 if name in HOLES else pytest.approx(scales[name]))
    start = full_weights(start_coordinates(report, units, 4), units, 4)
    fgd = CANDIDATE_FEATURES.index("is_fgd_choice")
    expected = old.copy()
    expected[:, fgd] = 1.0
    expected[1:, list(SHARED_ONLY)] = 0.0  # never searched outside the shared class
    assert np.allclose(start, expected, atol=1e-5)
    bad = dict(report, feature_scales=report["feature_scales"][:-1])
    with pytest.raises(ValueError, match="feature_scales for"):
        continued_scales(bad, lambda: measured)


def test_a_search_continued_from_an_older_report_runs_and_reports_every_feature(
    every_20th_node_csv, tmp_path
):
    settings = tiny_search_settings(
        every_20th_node_csv, linear_groups=4, cma_diagonal=True, sigma0=0.1
    )
    zero = np.zeros((len(POD_GROUPS), len(CANDIDATE_FEATURES)))
    report = _old_report(zero, {CANDIDATE_FEATURES[i]: 1.0 for i in SEARCHED})
    lines: list[str] = []
    out = run_search(settings, tmp_path / "s", log=lines.append, init=report)
    assert any("new features" in line and "breaks_free_node" in line for line in lines)
    assert out["feature_names"] == [CANDIDATE_FEATURES[i] for i in SEARCHED]
    assert out["settings"]["new_feature_step"] == 3.0
    saved = json.loads((tmp_path / "s" / "search_report.json").read_text())
    assert set(saved["weights"]["multi_gpu"]) == set(CANDIDATE_FEATURES)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_new_feature_step_must_be_positive(bad):
    with pytest.raises(ValueError, match=r"new_feature_step \(--new-feature-step\) must be > 0"):
        SearchSettings(new_feature_step=bad)


def test_cli_refuses_a_bad_new_feature_step_and_creates_nothing(tmp_path):
    out = tmp_path / "n"
    cmd = [sys.executable, "-m", "keti_ray.cli", "search", "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--new-feature-step", "0"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "--new-feature-step) must be > 0" in proc.stderr
    assert not out.exists()
