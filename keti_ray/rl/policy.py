"""The learned allocator: candidates from `CandidateGenerator`, scored by the trained module.

`load_ppo_allocator(path)` verifies the checkpoint's manifest (SHA-256 of every file), builds
the network from code and the checkpoint's config.json, and loads its safetensors weights
(nothing is unpickled). Decisions are greedy (the best-scored valid candidate); a pod with one
candidate takes it. Every feature comes from the cluster state passed in, so a dry run or an
extender priority request changes nothing, and a release is seen at the next decision.
"""

from __future__ import annotations

from pathlib import Path

import torch

from keti_ray.allocators.base import Allocator
from keti_ray.cluster import ClusterState, Placement, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.paths import PACKAGE_DIR
from keti_ray.rl.candidates import (
    CANDIDATE_FEATURES,
    GLOBAL_FEATURES,
    CandidateGenerator,
    CandidateSet,
)
from keti_ray.rl.checkpoint import CheckpointError, load_scorer
from keti_ray.rl.scorer import CandidateScorer

DEFAULT_CHECKPOINT = PACKAGE_DIR / "checkpoints" / "ppo_default"
# The shipped checkpoint's listing digest (its manifest's checkpoint_sha256), pinned in code so
# that a replaced default checkpoint with a matching, regenerated manifest is still refused.
SHIPPED_CHECKPOINT_SHA256 = "90807cbb7c35a2296c4f2bcb0f505c85c22a6a5fabeaeecce113fdac2b25d1b4"


class PPOAllocator(Allocator):
    """Greedy argmax over the candidate set with a CandidateScorer network."""

    name = "ppo"

    def __init__(
        self,
        net: CandidateScorer,
        typical: TypicalPods | None = None,
        k: int = 16,
        random_extra: int = 2,
        seed: int | None = None,
        fgd_below_pct: float = 0.0,
    ) -> None:
        self.set_net(net)
        # Below this allocated % of GPU capacity (read from the live state) the policy takes
        # FGD's candidate without scoring (the shipped policy was searched with this gate).
        self.fgd_below_pct = float(fgd_below_pct)
        self.gen = CandidateGenerator(typical or TypicalPods.default(), k, random_extra, seed)
        super().__init__(seed)

    def set_net(self, net: CandidateScorer) -> None:
        """Decide with `net` from now on (frozen: in eval mode, never trained in place)."""
        self.net = net.eval()
        # A linear-head network whose MLP output layer is all zeros (what policy search writes)
        # has logits exactly equal to its linear head: serving then skips the MLP (the same
        # floats, about a third of a millisecond less per decision).
        self._linear_only = bool(
            net.linear is not None and not net.logit.weight.any() and not net.logit.bias.any()
        )

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        if hasattr(self, "gen"):
            self.gen.reset(seed)
        self.decisions = 0
        self.fgd_agreements = 0

    def choose(self, cands: CandidateSet) -> int:
        """Index of the chosen candidate (never a padding slot)."""
        if cands.size == 1:
            return 0
        with torch.inference_mode():
            feats = torch.from_numpy(cands.features)
            glob = torch.from_numpy(cands.globals)
            mask = torch.from_numpy(cands.mask)
            if self._linear_only:
                logits = self.net.linear_logits(feats, glob, mask)
            else:
                logits = self.net.logits(feats[None], glob[None], mask[None])[0]
        return int(torch.argmax(logits))

    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        if self.fgd_below_pct and 100.0 - state.unallocated_gpu_pct() < self.fgd_below_pct:
            return self.gen.fgd.place(state, pod)
        cands = self.gen.candidates(state, pod)
        if cands is None:
            return None
        idx = self.choose(cands)
        if cands.size > 1:
            self.decisions += 1
            self.fgd_agreements += int(idx == cands.fgd_index)
        return cands.placement(idx)


def load_scorer_checkpoint(path: str | Path | None = None):
    """Verify and load the network of a checkpoint (default: the shipped one)."""
    root = Path(path) if path else DEFAULT_CHECKPOINT
    if not root.exists():
        raise CheckpointError(
            f"checkpoint {root}: does not exist; pass a folder written by `keti-ray train` "
            "(its checkpoint/ folder)"
        )
    pinned = SHIPPED_CHECKPOINT_SHA256 if root.resolve() == DEFAULT_CHECKPOINT.resolve() else None
    return load_scorer(root, pinned, CANDIDATE_FEATURES, GLOBAL_FEATURES)


def load_ppo_allocator(
    path: str | Path | None = None, typical: TypicalPods | None = None, seed: int | None = None
) -> PPOAllocator:
    """The PPO allocator of a verified checkpoint (None = the shipped default)."""
    torch.set_num_threads(1)
    net, config, _ = load_scorer_checkpoint(path)
    return PPOAllocator(
        net,
        typical=typical,
        k=int(config.get("k", 16)),
        random_extra=int(config.get("random_extra", 2)),
        seed=seed,
        fgd_below_pct=float(config.get("fgd_below_pct", 0.0)),
    )


__all__ = ["DEFAULT_CHECKPOINT", "PPOAllocator", "load_ppo_allocator", "load_scorer_checkpoint"]
