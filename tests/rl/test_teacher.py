"""The rollout teacher / clairvoyant reference and the end-of-replay decomposition."""

from __future__ import annotations

import numpy as np

from keti_ray.allocators import make_allocator
from keti_ray.allocators.rollout import RolloutAllocator, real_future, sampled_future
from keti_ray.cluster import ClusterState
from keti_ray.evaluate import _Recorder, explain_state
from keti_ray.replay import replay, tune_workload
from keti_ray.rl.teacher import TeacherSettings, label_episode


def small(openb, count=50, seed=3):
    nodes_all, pods, typical = openb
    rng = np.random.default_rng(seed)
    nodes = [nodes_all[i] for i in np.sort(rng.choice(len(nodes_all), count, replace=False))]
    workload = tune_workload(pods, ClusterState(nodes).total_gpu_milli, 1.3, seed)
    return nodes, pods, typical, workload


def test_rollouts_that_never_start_are_fgd(openb):
    nodes, pods, typical, workload = small(openb)
    never = RolloutAllocator(typical, real_future(workload, 20), seed=3, start_pct=101.0)
    a = replay(nodes, workload, never, 3, typical)
    b = replay(nodes, workload, make_allocator("fgd", typical, 3), 3, typical)
    assert np.array_equal(a.unallocated_gpu_pct, b.unallocated_gpu_pct, equal_nan=True)
    assert never.decisions == 0


def test_rollouts_skip_a_pod_only_when_nothing_fits(openb):
    nodes, pods, typical, workload = small(openb, 30)
    teacher = RolloutAllocator(typical, sampled_future(pods, 20, 1, 5), seed=3, start_pct=60.0)
    rec = _Recorder(teacher)
    state = ClusterState(nodes)
    rec.reset(3)
    for pod in workload:
        fits = bool(state.feasible_nodes(pod).any())
        choice = rec.place(state, pod)
        assert (choice is not None) == fits
        if choice is not None:
            state.allocate(pod, choice)
    assert teacher.decisions > 0
    report = explain_state(state, rec.skipped)
    free = report["whole_free_gpus"]["pct"] + sum(b["pct"] for b in report["slivers"].values())
    assert abs(free - report["unallocated_pct"]) < 0.01
    assert sum(v["pods"] for v in report["skipped_by_shape"].values()) == len(rec.skipped)


def test_teacher_labels_are_valid_slots_of_late_decisions(openb):
    nodes, pods, typical, _ = small(openb, 40)
    settings = TeacherSettings(horizon=15, top=3, start_pct=75.0, early_keep=0.0)
    out = label_episode(nodes, pods, typical, 7, 8, 2, settings)
    n = len(out["action"])
    assert n == out["teacher_decisions"] > 0 and out["late"].all()
    assert out["cands"].shape == (n, 8, out["cands"].shape[2])
    assert (out["mask"][np.arange(n), out["action"]] == 1).all()
    assert 0 < out["changed_vs_fgd"] < n  # it does leave FGD's slot, but not always
