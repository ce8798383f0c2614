"""Which GPU of the chosen node a pod gets, for the policies that do not choose it themselves."""

from __future__ import annotations

import numpy as np

from keti_ray.cluster import ClusterState, Placement, PodRequest


def best_fit_gpu(state: ClusterState, pod: PodRequest, node: int) -> Placement:
    """Shared pod: the tightest GPU that fits (lowest index on ties); else lowest free GPUs."""
    if not pod.is_shared:
        return state.placement_for(pod, node)
    free = state.gpu_free[node]
    room = np.where(free >= pod.gpu_milli, free, np.iinfo(np.int64).max)
    return state.placement_for(pod, node, (int(room.argmin()),))


def random_gpu(
    state: ClusterState, pod: PodRequest, node: int, rng: np.random.Generator
) -> Placement:
    """Shared pod: any GPU that fits, uniformly; else the lowest-index free GPUs."""
    if not pod.is_shared:
        return state.placement_for(pod, node)
    fitting = np.flatnonzero(state.gpu_free[node] >= pod.gpu_milli)
    return state.placement_for(pod, node, (int(rng.choice(fitting)),))
