"""The candidate-scoring RLModule: one shared network scores every candidate placement.

Each candidate's features, joined with the pod's and cluster's features, go through the same
MLP to one logit, so the order of candidates does not matter and K can be anything the
observation space says. Padding slots get a logit of FLOAT_MIN (never sampled, never chosen
by argmax). The value head reads the masked mean of the candidates' hidden vectors together
with the global features (a permutation-invariant pooling of the set).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

MASKED_LOGIT = -1e9  # far below any real logit; finite so that softmax stays defined


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class CandidateScorer(nn.Module):
    """Plain torch core of the module (also used alone for behaviour cloning)."""

    def __init__(self, cand_dim: int, glob_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = _mlp([cand_dim + glob_dim, hidden, hidden])
        self.act = nn.Tanh()
        self.logit = nn.Linear(hidden, 1)
        self.value_encoder = _mlp([cand_dim + glob_dim, hidden, hidden])
        self.value = _mlp([hidden + glob_dim, hidden, 1])

    @staticmethod
    def _joined(cands: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        return torch.cat([cands, glob.unsqueeze(-2).expand(*cands.shape[:-1], glob.shape[-1])], -1)

    def logits(self, cands: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.act(self.encoder(self._joined(cands, glob)))
        out = self.logit(h).squeeze(-1)
        return torch.where(mask > 0.5, out, torch.full_like(out, MASKED_LOGIT))

    def values(self, cands: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.act(self.value_encoder(self._joined(cands, glob)))
        w = mask.unsqueeze(-1)
        pooled = (h * w).sum(-2) / w.sum(-2).clamp(min=1.0)
        return self.value(torch.cat([pooled, glob], -1)).squeeze(-1)


class CandidateScorerModule(TorchRLModule, ValueFunctionAPI):
    """RLlib module wrapping CandidateScorer; observation = {candidates, globals, action_mask}."""

    def setup(self) -> None:
        space = self.observation_space
        cand_dim = space["candidates"].shape[-1]
        glob_dim = space["globals"].shape[-1]
        config = self.model_config or {}
        self.net = CandidateScorer(cand_dim, glob_dim, int(config.get("hidden", 64)))
        init = config.get("init_weights")
        if init:  # a safetensors file the trainer verified (tensors only, never code)
            from safetensors.torch import load_file

            self.net.load_state_dict(load_file(str(init)), strict=True)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        logits = self.net.logits(obs["candidates"], obs["globals"], obs["action_mask"])
        return {Columns.ACTION_DIST_INPUTS: logits}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        obs = batch[Columns.OBS]
        return self.net.values(obs["candidates"], obs["globals"], obs["action_mask"])
