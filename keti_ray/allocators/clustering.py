"""GpuClustering: keep pods that ask for the same kind of GPU share on the same nodes."""

from __future__ import annotations

import numpy as np

from keti_ray.allocators.scored import MAX_SPEC_GPU_MILLI, ScoredAllocator
from keti_ray.cluster import ClusterState, PodRequest, gpu_tag


class GpuClusteringAllocator(ScoredAllocator):
    name = "clustering"

    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> np.ndarray:
        if pod.num_gpu == 0:
            return np.zeros(rows.size, dtype=np.int64)  # CPU pods: every node ties
        used = MAX_SPEC_GPU_MILLI - state.gpu_free[rows].sum(axis=1)
        base = 25 * used // MAX_SPEC_GPU_MILLI  # integer arithmetic, as the reference
        tags = state.pod_tags[rows]
        kinds = (tags > 0).sum(axis=1)
        same = tags[:, gpu_tag(pod)] > 0
        bonus = np.where(
            same, np.where(kinds == 1, 75, 50), np.where(kinds == 0, 25, 0)
        )  # only this kind / this kind among others / empty node / other kinds only
        return base + bonus
