"""Pod classes for the learned allocator's per-class linear head.

Why: the pods that strand GPUs differ by class. A shared pod decides which gap a GPU keeps, a
whole-GPU or multi-GPU pod which node loses whole GPUs, and a CPU-only pod which node's CPU
runs out under free GPUs; one weight vector for all of them has to compromise. The class is
read from the pod's global features, so training and serving compute it the same way.
"""

from __future__ import annotations

import torch

from keti_ray.rl.candidates import GLOBAL_FEATURES

POD_GROUPS = ("shared", "one_gpu", "multi_gpu", "cpu_only")
ACCEPTED_GROUP_COUNTS = (1, len(POD_GROUPS))  # one vector for all pods, or one per class

_NUM_GPU = GLOBAL_FEATURES.index("pod_num_gpu")  # num_gpu / 8
_SHARED = GLOBAL_FEATURES.index("pod_is_shared")
_CPU_ONLY = GLOBAL_FEATURES.index("pod_is_cpu_only")


def group_count_problem(value: object) -> str | None:
    """Why `value` is no accepted `linear_groups` (None when it is one); callers name the field."""
    if isinstance(value, bool) or value not in ACCEPTED_GROUP_COUNTS:
        return (
            f"must be one of {list(ACCEPTED_GROUP_COUNTS)} (1, or one weight vector per pod "
            f"class {list(POD_GROUPS)}), got {value!r}"
        )
    return None


def pod_group(glob: torch.Tensor) -> torch.Tensor:
    """Index into POD_GROUPS of each pod ([..., NUM_GLOBAL_FEATURES] -> long [...])."""
    group = torch.where(glob[..., _NUM_GPU] * 8.0 > 1.5, 2, 1)
    group = torch.where(glob[..., _SHARED] > 0.5, 0, group)
    return torch.where(glob[..., _CPU_ONLY] > 0.5, 3, group).long()


__all__ = ["ACCEPTED_GROUP_COUNTS", "POD_GROUPS", "group_count_problem", "pod_group"]
