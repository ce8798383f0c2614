"""The per-pod-class linear head (keti_ray.rl.pod_groups, `linear_groups` = 4): each pod is
scored by its class's weight vector, a search continued from one vector starts from exactly
that policy, checkpoints carry the groups, and bad values are refused by name. Runs on every
20th openb node (61 nodes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from keti_ray.evaluate import load_inputs
from keti_ray.paths import pod_list_csv
from keti_ray.replay import replay, tune_workload
from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES
from keti_ray.rl.checkpoint import CheckpointError, load_scorer, save_scorer, write_manifest
from keti_ray.rl.config import ConfigError, load_config
from keti_ray.rl.pod_groups import POD_GROUPS
from keti_ray.rl.policy import PPOAllocator, load_ppo_allocator
from keti_ray.rl.search import (
    full_weights,
    linear_net,
    run_search,
    searched_coordinates,
    start_coordinates,
    weights_report,
)

from ..factories import tiny_search_settings

F = len(CANDIDATE_FEATURES)


def _class_of(pod) -> str:
    """The pod's class, read from the request itself (not from the features the code uses)."""
    if pod.num_gpu == 0:
        return "cpu_only"
    if pod.gpu_milli < 1000:
        return "shared"
    return "one_gpu" if pod.num_gpu == 1 else "multi_gpu"


@pytest.fixture(scope="module")
def small_cluster(every_20th_node_csv):
    path = every_20th_node_csv
    nodes, pods, typical, capacity = load_inputs(path, str(pod_list_csv("multigpu20")))
    return path, nodes, pods, typical, capacity


def _replay(small_cluster, policy, seed: int = 5):
    _, nodes, pods, typical, capacity = small_cluster
    workload = tune_workload(pods, capacity, 1.3, seed)
    return replay(nodes, workload, policy, seed, typical)


def test_each_pod_class_is_scored_by_its_own_vector(small_cluster):
    rows = np.random.default_rng(0).normal(0.0, 1.0, (len(POD_GROUPS), F))
    policy = PPOAllocator(linear_net(rows), small_cluster[3], 16, 2, 5, 0.0)
    seen: dict[str, int] = {}
    choose = policy.choose

    def checked(cands):
        chosen = choose(cands)
        cls = _class_of(cands.pod)
        expected = cands.features.astype(np.float64) @ rows[POD_GROUPS.index(cls)]
        expected[cands.mask < 0.5] = -np.inf
        assert chosen == int(np.argmax(expected)), cls
        seen[cls] = seen.get(cls, 0) + 1
        return chosen

    policy.choose = checked
    _replay(small_cluster, policy)
    assert set(seen) == set(POD_GROUPS) and min(seen.values()) > 5, seen


def test_the_whole_network_and_its_linear_path_agree_per_class(small_cluster):
    net = linear_net(np.random.default_rng(1).normal(0.0, 1.0, (len(POD_GROUPS), F)))
    cands = torch.randn(3, 16, F)
    glob = torch.zeros(3, len(GLOBAL_FEATURES))
    glob[0, GLOBAL_FEATURES.index("pod_is_shared")] = 1.0
    glob[1, GLOBAL_FEATURES.index("pod_num_gpu")] = 4 / 8
    glob[2, GLOBAL_FEATURES.index("pod_is_cpu_only")] = 1.0
    mask = torch.ones(3, 16)
    with torch.no_grad():
        whole = net.logits(cands, glob, mask)
        linear = net.linear_logits(cands, glob, mask)
        w = net.linear.weight
    assert torch.equal(whole, linear)
    for row, group in enumerate((0, 2, 3)):
        assert torch.allclose(linear[row], cands[row] @ w[group], atol=1e-5)


def test_a_search_continued_per_class_starts_from_the_one_vector_policy(small_cluster):
    """Replicating a one-vector search's weights over the classes is the same policy: the
    validation's 'started_from' contender is exactly the policy the search continued."""
    scales = np.random.default_rng(2).uniform(0.05, 1.0, F - 1).round(6)
    one = full_weights(np.random.default_rng(3).normal(0, 1.0, F - 1), scales)
    report = {"weights": weights_report(one), "feature_scales": scales.tolist()}
    per_class = full_weights(start_coordinates(report, scales, 4), scales, 4)
    shared_only = [CANDIDATE_FEATURES.index("gap_count_after")]
    assert per_class.shape == (4, F)
    assert np.allclose(per_class[0], one)
    assert np.allclose(per_class[1:, shared_only], 0.0)  # never searched outside "shared"
    a = _replay(small_cluster, PPOAllocator(linear_net(one), small_cluster[3], 16, 2, 5, 0.0))
    b = _replay(small_cluster, PPOAllocator(linear_net(per_class), small_cluster[3], 16, 2, 5, 0.0))
    assert np.array_equal(a.unallocated_gpu_pct, b.unallocated_gpu_pct, equal_nan=True)
    assert a.pods_placed == b.pods_placed
    # A per-class report cannot start a one-vector search.
    with pytest.raises(ValueError, match="one weight vector per pod class"):
        start_coordinates({"weights": weights_report(per_class)}, scales, 1)
    assert len(searched_coordinates(4)) == 4 * (F - 1) - 3 * 5


def test_a_per_class_search_writes_a_served_checkpoint(small_cluster, tmp_path):
    settings = tiny_search_settings(small_cluster[0], linear_groups=4, cma_diagonal=True)
    report = run_search(settings, tmp_path / "s", log=lambda _: None)
    assert set(report["weights"]) == set(POD_GROUPS)
    policy = load_ppo_allocator(tmp_path / "s" / "checkpoint")
    w = policy.net.linear.weight.detach().numpy()
    for g, name in enumerate(POD_GROUPS):
        assert np.allclose(
            w[g], [report["weights"][name][f] for f in CANDIDATE_FEATURES], atol=1e-5
        )
    assert policy._linear_only and w.shape == (4, F)


@pytest.mark.parametrize("bad", [3, True, "4", 0])
def test_checkpoint_linear_groups_is_checked(tmp_path, bad):
    root = tmp_path / "ck"
    config = {
        "hidden": 8,
        "linear_head": True,
        "linear_groups": 4,
        "candidate_features": list(CANDIDATE_FEATURES),
        "global_features": list(GLOBAL_FEATURES),
    }
    save_scorer(root, linear_net(np.ones((4, F)), hidden=8), config, {})
    assert load_scorer(root)[0].linear.weight.shape == (4, F)
    config["linear_groups"] = bad
    (root / "config.json").write_text(json.dumps({"kind": "keti-ray-candidate-scorer", **config}))
    write_manifest(root)
    with pytest.raises(CheckpointError, match="'linear_groups' must be one of"):
        load_scorer(root)


def test_config_linear_groups_is_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  linear_groups: 2\n")
    with pytest.raises(ConfigError, match=r"model\.linear_groups must be one of \[1, 4\]"):
        load_config(path)
    path.write_text("model:\n  linear_groups: 4\n  linear_head: true\n")
    assert load_config(path)["model"]["linear_groups"] == 4


def test_cli_refuses_bad_groups_and_changes_nothing(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "keti_ray.cli", "search", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    proc = run("--out", str(tmp_path / "n"), "--linear-groups", "3")
    assert proc.returncode == 2 and "--linear-groups) must be one of [1, 4]" in proc.stderr
    per_class = tmp_path / "per_class.json"
    per_class.write_text(
        json.dumps({"weights": weights_report(np.zeros((4, F))), "feature_scales": [1.0] * (F - 1)})
    )
    proc = run("--out", str(tmp_path / "n"), "--init", str(per_class))
    assert proc.returncode == 2 and "--init" in proc.stderr and "per pod class" in proc.stderr
    assert not (tmp_path / "n").exists()
