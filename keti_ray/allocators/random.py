"""Random: any feasible node, uniformly (the paper's weakest baseline)."""

from __future__ import annotations

import numpy as np

from keti_ray.allocators.base import Allocator
from keti_ray.allocators.gpu_select import random_gpu
from keti_ray.cluster import ClusterState, Placement, PodRequest


class RandomAllocator(Allocator):
    name = "random"

    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        candidates = np.flatnonzero(state.feasible_nodes(pod))
        if candidates.size == 0:
            return None
        node = int(candidates[self.rng.integers(candidates.size)])
        return random_gpu(state, pod, node, self.rng)
