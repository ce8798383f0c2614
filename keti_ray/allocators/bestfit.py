"""BestFit: the node with the least free CPU and GPU left after placing (equal weights)."""

from __future__ import annotations

import numpy as np

from keti_ray.allocators.scored import MAX_SPEC_CPU_MILLI, MAX_SPEC_GPU_MILLI, ScoredAllocator
from keti_ray.cluster import ClusterState, PodRequest


class BestFitAllocator(ScoredAllocator):
    name = "bestfit"

    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> np.ndarray:
        cpu_left = (state.cpu_free[rows] - pod.cpu_milli) / MAX_SPEC_CPU_MILLI
        gpu_left = (state.gpu_free[rows].sum(axis=1) - pod.gpu_request_milli) / MAX_SPEC_GPU_MILLI
        # The reference min-max normalises these integers afterwards, which keeps their order.
        return ((1.0 - (0.5 * cpu_left + 0.5 * gpu_left)) * 100.0).astype(np.int64)
