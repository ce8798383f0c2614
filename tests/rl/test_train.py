"""`keti-ray train` end to end (a real subprocess, real Ray and RLlib): a short run that
beats random placement, its checkpoint and report, `eval --policy ppo:PATH`, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keti_ray.allocators import make_allocator
from keti_ray.cluster import ClusterState
from keti_ray.replay import replay, tune_workload
from keti_ray.rl.checkpoint import verify_checkpoint
from keti_ray.rl.policy import load_ppo_allocator
from keti_ray.rl.train import behaviour_clone, collect_fgd

SHORT_CONFIG = """
seed: 3
env: {pods: [default], num_nodes: 40, k: 8, random_extra: 2, fgd_warmup_pct: [0, 40]}
model: {hidden: 32}
bc: {episodes: 3, epochs: 10, value_epochs: 3, batch_size: 128}
ppo: {train_batch_size: 300, minibatch_size: 100, num_epochs: 1}
eval: {every: 1, seeds: [7], pods: [default], num_nodes: 40}
"""


def run(*args: str, timeout: int = 150) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keti_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, openb_module):
    root = tmp_path_factory.mktemp("train")
    (root / "short.yaml").write_text(SHORT_CONFIG)
    out = root / "out"
    proc = run(
        "train", "--config", str(root / "short.yaml"), "--iterations", "1", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def openb_module():
    from keti_ray.paths import trace_dir

    try:
        return trace_dir()
    except FileNotFoundError:
        pytest.skip("openb trace not available")


def test_train_writes_verified_checkpoint_and_report(trained):
    out, summary = trained
    manifest = verify_checkpoint(out / "checkpoint")
    assert summary["checkpoint_sha256"] == manifest["checkpoint_sha256"]
    assert not list(out.rglob("*.pkl"))  # nothing pickled is written
    report = json.loads((out / "report.json").read_text())
    assert len(report["iterations"]) == 1
    it = report["iterations"][0]
    assert it["env_steps"] and it["env_steps"] >= 300
    assert it["vf_loss"] is not None and it["policy_loss"] is not None
    assert report["bc"]["samples"] > 0
    assert [e["iteration"] for e in report["evaluations"]] == [0, 1]
    size = sum(p.stat().st_size for p in (out / "checkpoint").rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024


def test_short_training_beats_random_placement(trained, openb):
    out, _ = trained
    nodes_all, pods, typical = openb
    ppo_pct, random_pct = [], []
    for seed in (21, 22, 23):
        rng = np.random.default_rng(seed)
        nodes = [nodes_all[i] for i in np.sort(rng.choice(len(nodes_all), 60, replace=False))]
        workload = tune_workload(pods, ClusterState(nodes).total_gpu_milli, 1.3, seed)
        ppo = load_ppo_allocator(out / "checkpoint", typical=typical, seed=seed)
        ppo_pct.append(replay(nodes, workload, ppo, seed, typical).unallocated_gpu_pct[-1])
        rand = make_allocator("random", typical, seed)
        random_pct.append(replay(nodes, workload, rand, seed, typical).unallocated_gpu_pct[-1])
    assert np.mean(ppo_pct) < np.mean(random_pct) - 1.0, (ppo_pct, random_pct)


def test_eval_cli_runs_the_trained_policy(trained, openb_module, tmp_path):
    out, _ = trained
    lines = (openb_module / "openb_node_list_gpu_node.csv").read_text().splitlines()
    (tmp_path / "nodes.csv").write_text("\n".join(lines[:1] + lines[1:300:5]) + "\n")
    proc = run(
        "eval",
        "--nodes",
        str(tmp_path / "nodes.csv"),
        "--pods",
        "default",
        "--policy",
        f"ppo:{out / 'checkpoint'},fgd",
        "--seeds",
        "42",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)["results"]
    assert set(results) == {f"ppo:{out / 'checkpoint'}", "fgd"}


def test_behaviour_cloning_is_deterministic_for_a_seed(small_settings):
    from keti_ray.rl.env import observation_space
    from keti_ray.rl.module import CandidateScorer

    def weights(seed):
        import torch

        torch.manual_seed(seed)
        space = observation_space(small_settings.k)
        net = CandidateScorer(space["candidates"].shape[1], space["globals"].shape[0], 16)
        demos = collect_fgd(small_settings, 1, seed, 0.99)
        behaviour_clone(
            net,
            demos,
            {
                "epochs": 2,
                "value_epochs": 1,
                "lr": 0.003,
                "batch_size": 64,
                "entropy_coeff": 0.0,
                "fgd_target_prob": 0.9,  # the soft target path of the loss
            },
            seed,
        )
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    assert bool((weights(1) == weights(1)).all())
    assert not bool((weights(1) == weights(2)).all())


def test_bad_config_and_resume_are_refused_clearly(tmp_path):
    (tmp_path / "bad.yaml").write_text("ppo: {learning_rate: 0.1}\n")
    proc = run(
        "train",
        "--config",
        str(tmp_path / "bad.yaml"),
        "--iterations",
        "1",
        "--out",
        str(tmp_path / "o"),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown key ppo.'learning_rate'" in proc.stderr
    (tmp_path / "ok.yaml").write_text("seed: 1\n")
    proc = run(
        "train",
        "--config",
        str(tmp_path / "ok.yaml"),
        "--iterations",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--resume",
        timeout=60,
    )
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert not Path(tmp_path / "o").exists()


def test_training_is_deterministic_for_a_seed(trained, tmp_path):
    out, summary = trained
    (tmp_path / "short.yaml").write_text(SHORT_CONFIG)
    proc = run(
        "train", "--config", str(tmp_path / "short.yaml"), "--iterations", "1",
        "--out", str(tmp_path / "again"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(proc.stdout.strip().splitlines()[-1])
    assert again["checkpoint_sha256"] == summary["checkpoint_sha256"]


def test_resume_continues_from_the_saved_weights(trained, tmp_path):
    import shutil

    out, summary = trained
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    # A config whose network and candidates differ from the checkpoint's: the checkpoint's
    # win (its weights continue), and the report says what the config asked for.
    other = SHORT_CONFIG.replace("model: {hidden: 32}", "model: {hidden: 64, linear_head: true}")
    (tmp_path / "short.yaml").write_text(other.replace("k: 8", "k: 12"))
    proc = run(
        "train", "--config", str(tmp_path / "short.yaml"), "--iterations", "1",
        "--out", str(copy), "--resume",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((copy / "report.json").read_text())
    assert [it["iteration"] for it in report["iterations"]] == [1, 2]
    assert report["checkpoint_sha256"] != summary["checkpoint_sha256"]  # trained further
    assert report["network_from_checkpoint"] == {
        "model.hidden": [64, 32],
        "model.linear_head": [True, False],
        "env.k": [12, 8],
    }
    verify_checkpoint(copy / "checkpoint")
    saved = json.loads((copy / "checkpoint" / "config.json").read_text())
    assert (saved["hidden"], saved["linear_head"], saved["k"]) == (32, False, 8)
