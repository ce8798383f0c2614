"""The RLlib RLModule (torch, new API stack) around the candidate-scoring network.

`keti_ray.rl.scorer.CandidateScorer` holds the network (also used alone for serving and
behaviour cloning); this module wires it into PPO: action logits from the candidate scores,
values from the pooled value head. Initial weights come from a safetensors file
(`model_config["init_weights"]`), never from a pickle.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from keti_ray.rl.scorer import MASKED_LOGIT, CandidateScorer

__all__ = ["MASKED_LOGIT", "CandidateScorer", "CandidateScorerModule"]


class CandidateScorerModule(TorchRLModule, ValueFunctionAPI):
    """RLlib module wrapping CandidateScorer; observation = {candidates, globals, action_mask}."""

    def setup(self) -> None:
        space = self.observation_space
        cand_dim = space["candidates"].shape[-1]
        glob_dim = space["globals"].shape[-1]
        config = self.model_config or {}
        self.net = CandidateScorer.from_model_config(cand_dim, glob_dim, config)
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
