"""DotProd: the node whose free (CPU, GPU) vector has the smallest dot product with the request."""

from __future__ import annotations

import numpy as np

from keti_ray.allocators.scored import MAX_SPEC_CPU_MILLI, MAX_SPEC_GPU_MILLI, ScoredAllocator
from keti_ray.cluster import ClusterState, PodRequest


class DotProdAllocator(ScoredAllocator):
    name = "dotprod"

    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> np.ndarray:
        cpu = state.cpu_free[rows] / MAX_SPEC_CPU_MILLI * (pod.cpu_milli / MAX_SPEC_CPU_MILLI)
        gpu_left = state.gpu_free[rows].sum(axis=1)
        gpu = gpu_left / MAX_SPEC_GPU_MILLI * (pod.gpu_request_milli / MAX_SPEC_GPU_MILLI)
        return (100.0 * (1.0 - (cpu + gpu) / 2.0)).astype(np.int64)
