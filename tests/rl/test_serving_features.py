"""Serving decides on the features training saw: every feature comes from the cluster state.

- The training environment's observation equals what the served allocator computes for the
  same state and pod.
- Through the allocation service, dry runs and extender priority requests between decisions,
  and releases, leave each real decision equal to that of a fresh allocator (no history) on a
  copy of the live state: nothing counts calls (the old `arrived` counter did) and a release
  is seen at once.
"""

from __future__ import annotations

import numpy as np
import torch

from keti_ray.booking.service import served_pod
from keti_ray.cluster import ClusterState
from keti_ray.replay import tune_workload
from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES
from keti_ray.rl.checkpoint import save_scorer
from keti_ray.rl.env import AllocationEnv
from keti_ray.rl.module import CandidateScorer
from keti_ray.rl.policy import PPOAllocator, load_ppo_allocator
from keti_ray.service import AllocationService, PolicySpec
from keti_ray.shares import smallest_gpu_sms

K, EXTRA = 8, 2


def scrambled_checkpoint(root) -> str:
    """A random network: its choices depend on every feature, not only on FGD's slot."""
    torch.manual_seed(11)
    net = CandidateScorer(len(CANDIDATE_FEATURES), len(GLOBAL_FEATURES), 16)
    config = {
        "hidden": 16,
        "k": K,
        "random_extra": EXTRA,
        "candidate_features": list(CANDIDATE_FEATURES),
        "global_features": list(GLOBAL_FEATURES),
    }
    save_scorer(root, net, config, {})
    return str(root)


def test_training_observation_equals_serving_features(small_settings):
    env = AllocationEnv(small_settings)
    obs, _ = env.reset(seed=4)
    for _ in range(40):  # a few steps in, with a used cluster
        obs, _, done, _, _ = env.step(int(np.flatnonzero(obs["action_mask"])[-1]))
        assert not done
    pod = env.workload[env.cursor]
    net = CandidateScorer(len(CANDIDATE_FEATURES), len(GLOBAL_FEATURES), 8)
    serving = PPOAllocator(net, env.gen.typical, env.k, small_settings.random_extra, env.gen.seed)
    cands = serving.gen.candidates(env.state.copy(), pod)
    assert np.array_equal(cands.features, obs["candidates"])
    assert np.array_equal(cands.globals, obs["globals"])
    assert np.array_equal(cands.mask, obs["action_mask"])


def test_dry_runs_priorities_and_releases_do_not_shift_decisions(openb, tmp_path):
    nodes_all, pods, typical = openb
    nodes = nodes_all[:60]
    root = scrambled_checkpoint(tmp_path / "ckpt")
    service = AllocationService(nodes, typical, PolicySpec("ppo", checkpoint=root), seed=5)
    assert service.policy_version.startswith("ppo@"), service.policy_error
    workload = tune_workload(pods, ClusterState(nodes).total_gpu_milli, 1.0, 9)[:160]
    rng = np.random.default_rng(0)
    placed: list[str] = []
    compared = 0
    for i, pod in enumerate(workload):
        other = workload[(i + 7) % len(workload)]
        for probe in (other, pod):  # dry runs and priorities: must change nothing
            if f"default/{probe.name}" not in service.state.placements:
                try:
                    service.allocate(probe, dry_run=True)
                except Exception:  # nothing fits: also a no-op
                    pass
                service.prioritize(probe, service.state.names[:20])  # the extender path
        if i % 9 == 8 and placed:  # releases lower what the cluster holds
            assert service.release(placed.pop(int(rng.integers(len(placed)))))
        fresh = load_ppo_allocator(root, typical=typical, seed=5)
        # the pod as the service books it (keti_ray.shares: the smallest GPU's minimum share)
        booked = served_pod(pod, smallest_gpu_sms(service.state.models))
        expected = fresh.place(service.state.copy(), booked)
        try:
            service.allocate(pod)
        except Exception:
            assert expected is None
            continue
        got = service.state.placements[f"default/{pod.name}"][1]
        assert (got.node, got.gpus) == (expected.node, expected.gpus), i
        compared += 1
        placed.append(pod.name)
    assert compared > 100
