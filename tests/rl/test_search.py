"""Policy search (keti_ray.rl.search): branching from the shared FGD prefix gives exactly what
a full replay gives, zero weights are FGD, evaluation seeds are refused, and a search writes a
checkpoint that the ordinary loader serves. Runs on every 20th openb node (61 nodes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from keti_ray.allocators.fgd import FGDAllocator
from keti_ray.evaluate import load_inputs
from keti_ray.paths import pod_list_csv
from keti_ray.replay import replay, tune_workload
from keti_ray.rl.candidates import CANDIDATE_FEATURES, NUM_CANDIDATE_FEATURES
from keti_ray.rl.checkpoint import CheckpointError, load_scorer, write_manifest
from keti_ray.rl.policy import PPOAllocator, load_ppo_allocator
from keti_ray.rl.search import (
    SEARCHED,
    SearchSettings,
    _finish,
    _prefix,
    full_weights,
    linear_net,
    run_search,
)

from ..factories import tiny_search_settings


@pytest.fixture(scope="module")
def nodes_csv(every_20th_node_csv) -> str:
    return every_20th_node_csv


def _full_replay(settings: SearchSettings, seed: int, allocator) -> float:
    nodes, pods, typical, capacity = load_inputs(settings.nodes_csv, str(pod_list_csv("default")))
    workload = tune_workload(pods, capacity, settings.tune, seed)
    return float(replay(nodes, workload, allocator, seed, typical).at(130))


def test_branches_from_the_prefix_match_full_replays(nodes_csv):
    settings = tiny_search_settings(nodes_csv)
    seed = 1234
    workload, progress, policy = _prefix(settings, "default", seed)
    assert 0 < progress.next_index < len(workload)  # the gate stopped it part-way
    _, _, typical, _ = load_inputs(nodes_csv, str(pod_list_csv("default")))

    fgd_branch = _finish(workload, progress, policy, None)
    assert fgd_branch["unallocated_130"] == _full_replay(settings, seed, FGDAllocator(typical))

    weights = full_weights(
        np.random.default_rng(3).normal(0, 1.0, len(SEARCHED)), np.ones(len(SEARCHED))
    )
    branch = _finish(workload, progress, policy, linear_net(weights))
    full = PPOAllocator(linear_net(weights), typical, settings.k, settings.random_extra, seed, 80.0)
    assert branch["unallocated_130"] == _full_replay(settings, seed, full)
    assert branch["deviations"] == full.decisions - full.fgd_agreements > 0
    # The prefix itself is untouched by branching: a second branch gives the same figure.
    assert _finish(workload, progress, policy, None) == fgd_branch


def test_zero_search_weights_are_fgd(nodes_csv):
    settings = tiny_search_settings(nodes_csv)
    _, _, typical, _ = load_inputs(nodes_csv, str(pod_list_csv("default")))
    policy = PPOAllocator(
        linear_net(full_weights(np.zeros(len(SEARCHED)), np.ones(len(SEARCHED)))),
        typical,
        16,
        2,
        7,
        0.0,
    )
    value = _full_replay(settings, 7, policy)
    assert policy.decisions > 100 and policy.fgd_agreements == policy.decisions
    assert value == _full_replay(settings, 7, FGDAllocator(typical))


@pytest.mark.parametrize(
    "kw",
    [
        {"seed_base": 40, "generations": 3},
        {"validation_seeds": (51,)},
        {"seed_base": 0, "generations": 45},
    ],
)
def test_evaluation_seeds_are_refused(nodes_csv, kw):
    with pytest.raises(ValueError, match="evaluation seeds"):
        tiny_search_settings(nodes_csv, **kw)


def test_search_writes_a_served_checkpoint_and_continues(nodes_csv, tmp_path):
    first = run_search(
        tiny_search_settings(nodes_csv, generations=2), tmp_path / "a", log=lambda _: None
    )
    assert [r["generation"] for r in first["curve"]] == [0, 1]
    assert (tmp_path / "a" / "search_curve.png").stat().st_size > 1000
    policy = load_ppo_allocator(tmp_path / "a" / "checkpoint")
    weights = policy.net.linear.weight.detach().numpy()[0]
    assert np.allclose(weights, [first["weights"][n] for n in CANDIDATE_FEATURES], atol=1e-5)
    assert weights[CANDIDATE_FEATURES.index("is_fgd_choice")] == 1.0
    assert float(policy.net.logit.weight.detach().abs().sum()) == 0.0  # the MLP adds nothing yet
    assert policy.fgd_below_pct == 80.0

    report = json.loads((tmp_path / "a" / "search_report.json").read_text())
    second = run_search(
        tiny_search_settings(nodes_csv, seed_base=21_000, seed=1),
        tmp_path / "b",
        lambda _: None,
        report,
    )
    assert second["started_from"] == first["checkpoint_sha256"]
    assert second["feature_scales"] == first["feature_scales"]  # same units as the first
    v = second["validation"]
    assert {"result", "started_from", "result_minus_started_from"} <= set(v)
    assert v["result_minus_started_from"]["per_pair"] == [
        round(a - b, 3)
        for a, b in zip(v["result"]["per_pair"], v["started_from"]["per_pair"], strict=True)
    ]


def test_checkpoint_linear_head_must_be_a_bool(tmp_path):
    from keti_ray.rl.checkpoint import save_scorer

    root = tmp_path / "ck"
    config = {
        "hidden": 8,
        "linear_head": True,
        "candidate_features": list(CANDIDATE_FEATURES),
        "global_features": ["g"] * 10,
    }
    save_scorer(root, linear_net(np.ones(NUM_CANDIDATE_FEATURES), hidden=8), config, {})
    assert load_scorer(root)[1]["linear_head"] is True
    config["linear_head"] = "yes"
    (root / "config.json").write_text(json.dumps({"kind": "keti-ray-candidate-scorer", **config}))
    write_manifest(root)
    with pytest.raises(CheckpointError, match="'linear_head' must be true or false"):
        load_scorer(root)


def test_cli_refuses_bad_input_and_changes_nothing(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "keti_ray.cli", "search", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    proc = run("--out", str(busy))
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    proc = run("--out", str(tmp_path / "n"), "--lists", "default,a,b,c,d,e")
    assert proc.returncode == 2 and "1-5 training pod lists" in proc.stderr
    proc = run("--out", str(tmp_path / "n"), "--lists", "nosuchlist")
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = run("--out", str(tmp_path / "n"), "--seed-base", "40")
    assert proc.returncode == 2 and "evaluation seeds" in proc.stderr
    assert not (tmp_path / "n").exists()


def test_serving_skips_a_zeroed_mlp_with_the_same_choices(nodes_csv):
    """PPOAllocator's linear-only path (MLP output layer all zeros) chooses exactly as the
    whole network does, decision for decision."""
    settings = tiny_search_settings(nodes_csv)
    _, _, typical, _ = load_inputs(nodes_csv, str(pod_list_csv("default")))
    weights = full_weights(
        np.random.default_rng(5).normal(0, 1.0, len(SEARCHED)), np.ones(len(SEARCHED))
    )
    runs = []
    for fast in (True, False):
        policy = PPOAllocator(linear_net(weights), typical, 16, 2, 11, 80.0)
        assert policy._linear_only
        policy._linear_only = fast
        chosen: list[int] = []
        choose = policy.choose
        policy.choose = lambda c, choose=choose, chosen=chosen: (
            chosen.append(choose(c)) or chosen[-1]
        )
        runs.append((_full_replay(settings, 11, policy), chosen))
    assert runs[0] == runs[1] and len(runs[0][1]) > 50
    net = linear_net(weights)
    with torch.no_grad():
        net.logit.bias.fill_(0.5)  # a live MLP: the whole network decides
    assert not PPOAllocator(net, typical, 16, 2, 11, 80.0)._linear_only
