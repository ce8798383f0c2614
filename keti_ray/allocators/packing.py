"""GpuPacking: fill partly used GPUs first, then used nodes, then empty nodes."""

from __future__ import annotations

import numpy as np

from keti_ray.allocators.scored import ScoredAllocator
from keti_ray.cluster import MILLI_PER_GPU, ClusterState, PodRequest


class GpuPackingAllocator(ScoredAllocator):
    name = "packing"

    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> np.ndarray:
        if pod.num_gpu == 0:
            return np.zeros(rows.size, dtype=np.int64)  # CPU pods: every node ties
        free = state.gpu_free[rows]
        count = state.gpu_count[rows]
        fully_free = (free == MILLI_PER_GPU).sum(axis=1)
        # GPUs the pod would use: the tightest ones that fit (stable, lowest index first).
        order = np.argsort(
            np.where(free >= pod.gpu_milli, free, MILLI_PER_GPU + 1), axis=1, kind="stable"
        )
        used = np.take_along_axis(free, order[:, : pod.num_gpu], axis=1)
        new_full = (used == MILLI_PER_GPU).sum(axis=1)
        free_ratio_sum = (used * 100 // MILLI_PER_GPU).sum(axis=1)
        empty_node = np.maximum(100 // 3 - fully_free, fully_free)
        used_node = np.maximum(100 // 2 - new_full, 100 // 3)
        shared_gpu = np.maximum(100 - free_ratio_sum // 10, 100 // 2)
        return np.where(
            fully_free == count, empty_node, np.where(new_full > 0, used_node, shared_gpu)
        )
