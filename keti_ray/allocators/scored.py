"""Base for the heuristics that score every feasible node and take the best (ties by rank)."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from keti_ray.allocators.base import Allocator
from keti_ray.allocators.gpu_select import best_fit_gpu
from keti_ray.cluster import ClusterState, Placement, PodRequest

# Normalisers of the reference simulator: the largest node it models (128 CPUs, 8 GPUs).
MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_MILLI = 8_000


class ScoredAllocator(Allocator):
    """Integer node scores (higher is better) and the best-fit GPU choice for shared pods."""

    @abstractmethod
    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> np.ndarray:
        """int64 score of each node in `rows` (all feasible for `pod`)."""

    def node_scores(self, state: ClusterState, pod: PodRequest) -> np.ndarray:
        scores = np.zeros(state.num_nodes, dtype=np.int64)
        rows = np.flatnonzero(state.feasible_nodes(pod))
        if rows.size:
            scores[rows] = self.scores(state, pod, rows)
        return scores

    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        feasible = state.feasible_nodes(pod)
        if not feasible.any():
            return None
        node = self.pick_best(self.node_scores(state, pod), feasible)
        assert node is not None
        return best_fit_gpu(state, pod, node)
