"""The one small interface every allocator implements: cluster state + pod -> placement or none."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from keti_ray.cluster import ClusterState, Placement, PodRequest


class Allocator(ABC):
    """Chooses where a pod goes; never mutates the state (the caller books the placement)."""

    name: str = "base"

    def __init__(self, seed: int | None = None) -> None:
        self.reset(seed)

    @abstractmethod
    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        """The chosen placement, or None when the pod fits nowhere."""

    def node_scores(self, state: ClusterState, pod: PodRequest) -> np.ndarray:
        """A 0-100 preference per node (higher is better; 0 where infeasible).

        Used where every node needs a score (the kube-scheduler extender); policies that
        have no per-node score rate the node they would choose 100.
        """
        scores = np.zeros(state.num_nodes, dtype=np.int64)
        choice = self.place(state, pod)
        if choice is not None:
            scores[choice.node] = 100
        return scores

    def reset(self, seed: int | None = None) -> None:
        """Forget per-replay caches and reseed (called before each replay)."""
        self.rng = np.random.default_rng(seed)
        self._priority: np.ndarray | None = None

    def node_priority(self, num_nodes: int) -> np.ndarray:
        """A random but fixed rank per node (drawn once per replay) that breaks score ties.

        The reference simulator prefixes node names with a seeded random permutation and its
        selectHost picks the smallest name among the best scores; a fixed seeded rank is the
        same rule.
        """
        if self._priority is None or len(self._priority) != num_nodes:
            self._priority = self.rng.permutation(num_nodes)
        return self._priority

    def pick_best(self, scores: np.ndarray, feasible: np.ndarray) -> int | None:
        """The feasible node with the highest score; ties go to the node of lowest rank."""
        candidates = np.flatnonzero(feasible)
        if candidates.size == 0:
            return None
        cand_scores = scores[candidates]
        top = candidates[cand_scores == cand_scores.max()]
        if top.size == 1:
            return int(top[0])
        return int(top[np.argmin(self.node_priority(len(feasible))[top])])
