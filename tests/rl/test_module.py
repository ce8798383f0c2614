"""The candidate-scoring network: masking, order of candidates, the value head, the RLModule."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns

from keti_ray.rl.candidates import NUM_CANDIDATE_FEATURES, NUM_GLOBAL_FEATURES
from keti_ray.rl.env import observation_space
from keti_ray.rl.module import MASKED_LOGIT, CandidateScorer, CandidateScorerModule

K = 12


def _batch(rng, n=64):
    cands = torch.tensor(rng.normal(size=(n, K, NUM_CANDIDATE_FEATURES)), dtype=torch.float32)
    glob = torch.tensor(rng.normal(size=(n, NUM_GLOBAL_FEATURES)), dtype=torch.float32)
    sizes = rng.integers(1, K + 1, size=n)
    mask = torch.tensor(np.arange(K)[None, :] < sizes[:, None], dtype=torch.float32)
    return cands, glob, mask


def test_invalid_candidates_are_never_chosen_or_sampled():
    torch.manual_seed(0)
    net = CandidateScorer(NUM_CANDIDATE_FEATURES, NUM_GLOBAL_FEATURES, 32)
    # make padding rows look attractive: large features where the mask is 0
    cands, glob, mask = _batch(np.random.default_rng(0))
    cands = torch.where(mask[..., None] > 0, cands, torch.full_like(cands, 50.0))
    logits = net.logits(cands, glob, mask)
    assert torch.all(logits[mask == 0] == MASKED_LOGIT)
    assert torch.all(mask[torch.arange(len(mask)), logits.argmax(-1)] == 1)
    samples = torch.distributions.Categorical(logits=logits).sample((200,))
    assert torch.all(mask.gather(1, samples.T) == 1)


def test_scores_follow_their_candidates_when_reordered():
    torch.manual_seed(1)
    net = CandidateScorer(NUM_CANDIDATE_FEATURES, NUM_GLOBAL_FEATURES, 32)
    cands, glob, mask = _batch(np.random.default_rng(1), n=8)
    mask = torch.ones_like(mask)
    perm = torch.randperm(K)
    base = net.logits(cands, glob, mask)
    permuted = net.logits(cands[:, perm], glob, mask[:, perm])
    assert torch.allclose(base[:, perm], permuted, atol=1e-5)
    assert torch.allclose(
        net.values(cands, glob, mask), net.values(cands[:, perm], glob, mask[:, perm]), atol=1e-5
    )


def test_value_ignores_padding_rows():
    torch.manual_seed(2)
    net = CandidateScorer(NUM_CANDIDATE_FEATURES, NUM_GLOBAL_FEATURES, 32)
    cands, glob, mask = _batch(np.random.default_rng(2), n=16)
    noisy = torch.where(mask[..., None] > 0, cands, torch.randn_like(cands) * 5)
    assert torch.allclose(net.values(cands, glob, mask), net.values(noisy, glob, mask), atol=1e-5)


def test_rlmodule_forward_and_values_on_a_batch():
    space = observation_space(K)
    module = CandidateScorerModule(
        observation_space=space, action_space=gym.spaces.Discrete(K), model_config={"hidden": 16}
    )
    cands, glob, mask = _batch(np.random.default_rng(3), n=5)
    batch = {Columns.OBS: {"candidates": cands, "globals": glob, "action_mask": mask}}
    out = module.forward_inference(batch)
    logits = out[Columns.ACTION_DIST_INPUTS]
    assert logits.shape == (5, K)
    assert torch.all(mask[torch.arange(5), logits.argmax(-1)] == 1)
    assert module.compute_values(batch).shape == (5,)
