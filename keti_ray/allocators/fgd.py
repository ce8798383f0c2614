"""FGD: place each pod where the node's fragmentation grows least (Weng et al., ATC 2023).

Scores follow the reference simulator exactly: score = int(sigmoid((old - new) / 1000) * 100),
so nearby fragmentation changes tie and ties are broken at random; for a shared pod the GPU is
the lowest-index one with the best integer score. Scores are cached per (node, pod shape) and
only the nodes that changed since a shape was last scored are recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keti_ray.allocators.base import Allocator
from keti_ray.cluster import ClusterState, Placement, PodRequest
from keti_ray.fragmentation import FragmentationModel, Shape, TypicalPods


def fgd_score(delta_frag: np.ndarray) -> np.ndarray:
    """The reference's integer score for a fragmentation change (new - old, in milli).

    The change is rounded to 1e-6 milli first: a change that is 0 in exact arithmetic can
    come out as +-1e-13 depending on which node states were summed together in one batch,
    which would flip the score between 49 and 50 and make a decision depend on cache history.
    """
    delta = np.round(delta_frag, 6)
    return (100.0 / (1.0 + np.exp(delta / 1000.0))).astype(np.int64)


def take_first_fit(gpu_free: np.ndarray, num: int, milli: int) -> np.ndarray:
    """Boolean mask [M, G]: the first `num` GPUs of each row with at least `milli` free."""
    fits = gpu_free >= milli
    return fits & (np.cumsum(fits, axis=1) <= num)


@dataclass
class _ShapeScores:
    score: np.ndarray  # int64 [N]
    gpu: np.ndarray  # int64 [N], chosen GPU for shared pods (-1 otherwise)
    stamp: np.ndarray  # int64 [N], node_version when computed (-1 = never)


class FGDAllocator(Allocator):
    name = "fgd"

    def __init__(self, typical: TypicalPods | None = None, seed: int | None = None) -> None:
        super().__init__(seed)
        self.typical = typical or TypicalPods.default()

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._bound: int | None = None

    # ---- caches ----------------------------------------------------------------------------

    def _bind(self, state: ClusterState) -> None:
        if self._bound == id(state) and self._nodes == state.num_nodes:
            return
        self._bound = id(state)
        self._nodes = state.num_nodes
        self.model = FragmentationModel(self.typical, state.models)
        self._frag = np.zeros(state.num_nodes)
        self._frag_stamp = np.full(state.num_nodes, -1, dtype=np.int64)
        self._shapes: dict[Shape, _ShapeScores] = {}

    def node_fragmentation(self, state: ClusterState) -> np.ndarray:
        """Current fragmentation of every node (cached, recomputed only where changed)."""
        self._bind(state)
        stale = np.flatnonzero(self._frag_stamp != state.node_version)
        if stale.size:
            self._frag[stale] = self.model.node_fragmentation(
                state.gpu_free[stale], state.cpu_free[stale], state.model_code[stale]
            )
            self._frag_stamp[stale] = state.node_version[stale]
        return self._frag

    # ---- decision --------------------------------------------------------------------------

    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> tuple:
        """Integer FGD scores (and GPU choice for shared pods) of placing `pod` on `rows`."""
        score, gpu, _ = self.scores_and_deltas(state, pod, rows)
        return score, gpu

    def scores_and_deltas(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> tuple:
        """Scores, GPU choice (-1 unless shared) and the fragmentation change behind each."""
        old = self.node_fragmentation(state)[rows]
        gpu_free = state.gpu_free[rows]
        cpu_new = state.cpu_free[rows] - pod.cpu_milli
        models = state.model_code[rows]
        if pod.is_shared:
            g = gpu_free.shape[1]
            trial = np.repeat(gpu_free[:, None, :], g, axis=1)  # [R, G, G]
            trial[:, np.arange(g), np.arange(g)] -= pod.gpu_milli
            new = self.model.node_fragmentation(
                trial.reshape(-1, g), np.repeat(cpu_new, g), np.repeat(models, g)
            ).reshape(-1, g)
            delta = new - old[:, None]
            score = np.where(gpu_free >= pod.gpu_milli, fgd_score(delta), np.iinfo(np.int64).min)
            best_gpu = score.argmax(axis=1)  # first GPU with the best score, as the reference
            pick = np.arange(len(rows))
            return score[pick, best_gpu], best_gpu, delta[pick, best_gpu]
        after = gpu_free - np.where(
            take_first_fit(gpu_free, pod.num_gpu, pod.gpu_milli), pod.gpu_milli, 0
        )
        delta = self.model.node_fragmentation(after, cpu_new, models) - old
        return fgd_score(delta), np.full(len(rows), -1, dtype=np.int64), delta

    def _scored(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> _ShapeScores:
        """The shape's score cache, brought up to date on the node indices `rows`."""
        self._bind(state)
        cache = self._shapes.get(pod.shape)
        if cache is None:
            n = state.num_nodes
            cache = _ShapeScores(
                np.zeros(n, dtype=np.int64),
                np.full(n, -1, dtype=np.int64),
                np.full(n, -1, dtype=np.int64),
            )
            self._shapes[pod.shape] = cache
        stale = rows[cache.stamp[rows] != state.node_version[rows]]
        if stale.size:
            cache.score[stale], cache.gpu[stale] = self.scores(state, pod, stale)
            cache.stamp[stale] = state.node_version[stale]
        return cache

    def node_scores(self, state: ClusterState, pod: PodRequest) -> np.ndarray:
        feasible = state.feasible_nodes(pod)
        return np.where(feasible, self._scored(state, pod, np.flatnonzero(feasible)).score, 0)

    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        feasible = state.feasible_nodes(pod)
        if not feasible.any():
            return None
        cache = self._scored(state, pod, np.flatnonzero(feasible))
        node = self.pick_best(cache.score, feasible)
        if node is None:
            return None
        if pod.is_shared:
            return Placement(node=node, gpus=(int(cache.gpu[node]),), milli=(pod.gpu_milli,))
        return state.placement_for(pod, node)
