"""Honest retraining: a paired test over >= 10 held-out seeds, a new versioned folder per
candidate, the report on disk before the pointer moves, the serving checkpoint untouched.

The candidates are real checkpoints (safetensors + manifest) whose networks are set by hand:
one always takes FGD's candidate, one always takes the candidate that fragments most, so "clearly
better" is known without training. Replays are real (`keti_ray.replay` on simulated nodes).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from keti_ray.allocators import make_allocator
from keti_ray.cluster import ClusterState
from keti_ray.promotion import PromotionError, paired_test, read_pointer, write_pointer
from keti_ray.replay import replay, tune_workload
from keti_ray.retrain import RetrainError, RetrainSettings, retrain
from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES
from keti_ray.rl.checkpoint import file_sha256, save_scorer
from keti_ray.rl.module import CandidateScorer
from keti_ray.rl.train import CHECKPOINT_SUBDIR
from keti_ray.simcluster import simulated_nodes
from keti_ray.telemetry import TelemetryStore

NODES = simulated_nodes(12)


def picker(feature: str) -> CandidateScorer:
    """A network whose logit grows with one candidate feature (so argmax follows it)."""
    net = CandidateScorer(len(CANDIDATE_FEATURES), len(GLOBAL_FEATURES), 4)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.encoder[0].weight[0, CANDIDATE_FEATURES.index(feature)] = 3.0
        net.encoder[2].weight[0, 0] = 3.0
        net.logit.weight[0, 0] = 10.0
    return net


def save(net: CandidateScorer, root) -> str:
    config = {
        "hidden": 4,
        "k": 8,
        "random_extra": 3,
        "candidate_features": list(CANDIDATE_FEATURES),
        "global_features": list(GLOBAL_FEATURES),
    }
    return save_scorer(root, net, config, {})["checkpoint_sha256"]


def fixed_trainer(net: CandidateScorer):
    """A train_fn that 'trains' by saving the given network into the candidate folder."""

    def train_fn(config, workload_csv, nodes, iterations, out_dir, init_from, seed):
        sha = save(net, out_dir / CHECKPOINT_SUBDIR)
        return {"checkpoint": str(out_dir / CHECKPOINT_SUBDIR), "sha256": sha, "report": {}}

    return train_fn


@pytest.fixture
def telemetry(tmp_path):
    store = TelemetryStore(tmp_path / "telemetry", writer="test")
    rng = np.random.default_rng(0)
    shapes = [(8000, 1, 1000), (4000, 1, 810), (4000, 1, 470), (4000, 1, 320), (2000, 1, 230)]
    rows = []
    for i in range(400):
        cpu, num, milli = shapes[int(rng.choice(len(shapes), p=[0.4, 0.2, 0.2, 0.1, 0.1]))]
        rows.append(
            {
                "time": float(i),
                "node": "sim-node-00",
                "op": "allocate",
                "pod": f"p{i}",
                "cpu_milli": cpu,
                "memory_mib": 1024,
                "num_gpu": num,
                "gpu_milli": milli,
            }
        )
    store.push("events", rows)
    store.flush()
    return tmp_path / "telemetry"


def settings(tmp_path, telemetry, serving, pointer=None, seeds=tuple(range(9001, 9011))):
    return RetrainSettings(
        telemetry=telemetry,
        out=tmp_path / "retrain",
        nodes=NODES,
        serving=serving,
        pointer=pointer,
        iterations=0,
        workload_pods=600,
        eval_seeds=seeds,
        min_improvement=0.05,
    )


def test_a_clearly_better_candidate_is_promoted_after_its_report(tmp_path, telemetry):
    serving = tmp_path / "serving"
    serving_sha = save(picker("frag_delta"), serving)  # weak: the most fragmenting candidate
    before = {p.name: file_sha256(p) for p in serving.iterdir()}
    pointer = tmp_path / "pointer.json"
    write_pointer(pointer, serving, serving_sha)
    result = retrain(
        settings(tmp_path, telemetry, str(pointer), pointer),
        train_fn=fixed_trainer(picker("is_fgd_choice")),
    )
    assert result.promoted, result.test
    assert result.test["seeds"] == 10
    assert result.test["mean_improvement"] > 2 * result.test["standard_error"] + 0.05
    record = read_pointer(pointer)
    assert record["checkpoint"] == str(result.candidate)
    report = json.loads(open(record["report"]).read())
    assert report["promoted"] and report["paired_test"]["promote"]
    assert result.candidate.parent.name == "candidate-0001"
    assert {p.name: file_sha256(p) for p in serving.iterdir()} == before


def test_the_same_policy_again_is_refused_and_each_run_gets_a_new_folder(tmp_path, telemetry):
    serving = tmp_path / "serving"
    sha = save(picker("is_fgd_choice"), serving)
    pointer = tmp_path / "pointer.json"
    write_pointer(pointer, serving, sha)
    before = pointer.read_text()
    first = retrain(
        settings(tmp_path, telemetry, str(pointer), pointer),
        train_fn=fixed_trainer(picker("is_fgd_choice")),
    )
    second = retrain(
        settings(tmp_path, telemetry, str(pointer), pointer),
        train_fn=fixed_trainer(picker("is_fgd_choice")),
    )
    assert not first.promoted and not second.promoted
    assert first.test["mean_improvement"] == 0.0
    assert pointer.read_text() == before
    assert first.candidate.parent.name == "candidate-0001"
    assert second.candidate.parent.name == "candidate-0002"
    assert first.report.is_file() and second.report.is_file()


def test_fewer_than_ten_seeds_is_refused(tmp_path, telemetry):
    with pytest.raises(RetrainError, match="at least 10"):
        retrain(
            settings(tmp_path, telemetry, None, seeds=(1, 2, 3)),
            train_fn=fixed_trainer(picker("is_fgd_choice")),
        )


def test_noise_between_seeds_of_one_policy_is_not_an_improvement():
    """FGD against itself on other workloads (noise only): the paired test refuses it,
    although on some seeds one side is ahead by far more than the old 0.05-point rule."""
    nodes = simulated_nodes(16)
    capacity = ClusterState(nodes).total_gpu_milli
    from keti_ray.fragmentation import TypicalPods

    pods = TypicalPods.default()
    from keti_ray.calibration import WorkloadMix

    mix = WorkloadMix(pods.shapes, pods.weights, 0.0, 1000)

    def score(seed: int) -> float:
        workload = tune_workload(mix.sample(400, seed), capacity, 1.3, seed)
        result = replay(nodes, workload, make_allocator("fgd", pods, seed), seed, pods)
        curve = result.unallocated_gpu_pct
        return float(curve[~np.isnan(curve)][-1])

    a = [score(s) for s in range(100, 110)]
    b = [score(s) for s in range(200, 210)]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) > 0.05
    assert not paired_test(a, b, 0.05)["promote"]
    assert not paired_test(b, a, 0.05)["promote"]
    with pytest.raises(PromotionError, match="at least 10"):
        paired_test(a[:5], b[:5], 0.05)
