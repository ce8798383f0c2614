"""The candidate-scoring network in plain torch (no Ray): what serving and distillation use.

Each candidate's features, joined with the pod's and cluster's features, go through the same
MLP to one logit, so the order of candidates does not matter and K can be anything. Padding
slots get MASKED_LOGIT (never chosen by argmax). The value head reads the masked mean of the
candidates' hidden vectors together with the global features. `keti_ray.rl.module` wraps it
as an RLlib RLModule for PPO.

With `linear_head`, a linear term over the candidate's own features is added to each logit.
Policy search (`keti_ray.rl.search`) sets that term and zeroes the MLP's output layer, so the
policy starts as an exact, readable linear rule that PPO can then fine-tune as one network.
With `linear_groups` = 4 the head holds one weight vector per pod class
(`keti_ray.rl.pod_groups`) and each pod is scored by its class's vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from keti_ray.rl.pod_groups import group_count_problem, pod_group

MASKED_LOGIT = -1e9  # far below any real logit; finite so that softmax stays defined


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _masked(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padding slots get MASKED_LOGIT."""
    return torch.where(mask > 0.5, out, torch.full_like(out, MASKED_LOGIT))


class CandidateScorer(nn.Module):
    """Plain torch core of the module (also used alone for behaviour cloning)."""

    def __init__(
        self,
        cand_dim: int,
        glob_dim: int,
        hidden: int = 64,
        linear_head: bool = False,
        linear_groups: int = 1,
    ) -> None:
        super().__init__()
        problem = group_count_problem(linear_groups)
        if problem:
            raise ValueError(f"linear_groups {problem}")
        self.linear_groups = linear_groups
        self.linear = nn.Linear(cand_dim, linear_groups, bias=False) if linear_head else None
        self.encoder = _mlp([cand_dim + glob_dim, hidden, hidden])
        self.act = nn.Tanh()
        self.logit = nn.Linear(hidden, 1)
        self.value_encoder = _mlp([cand_dim + glob_dim, hidden, hidden])
        self.value = _mlp([hidden + glob_dim, hidden, 1])

    @classmethod
    def from_model_config(
        cls, cand_dim: int, glob_dim: int, model: Mapping[str, Any]
    ) -> CandidateScorer:
        """The network a training config's `model` section describes (training and the
        RLlib module build it the same way)."""
        return cls(
            cand_dim,
            glob_dim,
            int(model.get("hidden", 64)),
            linear_head=bool(model.get("linear_head", False)),
            linear_groups=int(model.get("linear_groups", 1)),
        )

    @staticmethod
    def _joined(cands: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        return torch.cat([cands, glob.unsqueeze(-2).expand(*cands.shape[:-1], glob.shape[-1])], -1)

    def logits(self, cands: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.act(self.encoder(self._joined(cands, glob)))
        out = self.logit(h).squeeze(-1)
        if self.linear is not None:
            out = out + self._linear_term(cands, glob)
        return _masked(out, mask)

    def linear_logits(
        self, cands: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The linear head's logits alone: equal to `logits` when the MLP's output layer is
        all zeros (serving uses it then, `keti_ray.rl.policy`)."""
        return _masked(self._linear_term(cands, glob), mask)

    def _linear_term(self, cands: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """[..., K] linear scores: the pod's class's weight vector on each candidate."""
        per_group = self.linear(cands)  # [..., K, groups]
        if self.linear_groups == 1:
            return per_group.squeeze(-1)
        index = pod_group(glob)[..., None, None].expand(*per_group.shape[:-1], 1)
        return per_group.gather(-1, index).squeeze(-1)

    def values(self, cands: torch.Tensor, glob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.act(self.value_encoder(self._joined(cands, glob)))
        w = mask.unsqueeze(-1)
        pooled = (h * w).sum(-2) / w.sum(-2).clamp(min=1.0)
        return self.value(torch.cat([pooled, glob], -1)).squeeze(-1)
