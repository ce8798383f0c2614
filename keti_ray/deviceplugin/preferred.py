"""Which GPU of this node should serve a request: FGD locally, best-fit as the fallback.

GetPreferredAllocation only sees the node's own free units (kubelet's available device IDs),
so "FGD locally" means: build a one-node cluster state whose GPUs have exactly those free
shares and ask the FGD allocator (keti_ray.allocators, on main) where the request goes.
Where that module is not importable, `best_fit` is used: the fullest GPU that still fits,
which keeps whole GPUs free, the same direction FGD pushes in.
Units here are SM-percent units (100 per GPU); conversion to milli is explicit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from keti_ray.deviceplugin.units import units_to_milli

log = logging.getLogger(__name__)

# free units per GPU (-1 = not usable) and requested units (1..100) -> chosen GPU index or None
Chooser = Callable[[Sequence[int], int], "int | None"]


def best_fit(free_units: Sequence[int], units: int) -> int | None:
    """The GPU with the least free units that still fits `units` (ties: lowest index)."""
    best: int | None = None
    for i, free in enumerate(free_units):
        if free >= units and (best is None or free < free_units[best]):
            best = i
    return best


class FgdChooser:
    """FGD from keti_ray.allocators on a one-node state built from the free units.

    A fresh `ClusterState` per call (the node's real free shares, in milli) and a `reset()`
    of the allocator, whose score caches are keyed by the state object and node versions.
    """

    def __init__(self, gpu_model: str = "", seed: int = 0) -> None:
        from keti_ray.allocators import make_allocator
        from keti_ray.cluster import MAX_GPUS_PER_NODE, ClusterState, NodeSpec, PodRequest

        self._ClusterState = ClusterState
        self._NodeSpec = NodeSpec
        self._PodRequest = PodRequest
        self._max_gpus = MAX_GPUS_PER_NODE
        self._seed = seed
        self._alloc = make_allocator("fgd", typical=None, seed=seed)
        self._model = gpu_model or "GPU"

    def __call__(self, free_units: Sequence[int], units: int) -> int | None:
        return self._choose(tuple(free_units), units)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one chooser per plugin, lives as long)
    def _choose(self, free_units: tuple[int, ...], units: int) -> int | None:
        """Deterministic (seeded, reset per call), so the answer for a free vector is cached."""
        n = len(free_units)
        if n == 0 or n > self._max_gpus:
            return best_fit(free_units, units)  # the cluster model holds at most 8 GPUs a node
        spec = self._NodeSpec("local", 10**9, 10**9, n, self._model)
        state = self._ClusterState.from_specs([spec])
        for i, free in enumerate(free_units):
            # units -> milli; an unusable GPU gets 0 free milli, so FGD never picks it
            state.gpu_free[0, i] = units_to_milli(free) if free >= 0 else 0
        state.node_version[0] += 1
        pod = self._PodRequest("preferred", 0, 0, 1, units_to_milli(units), gpu_spec=frozenset())
        self._alloc.reset(self._seed)
        placement = self._alloc.place(state, pod)
        if placement is None or not placement.gpus:
            return None
        chosen = int(placement.gpus[0])
        if not 0 <= chosen < n or free_units[chosen] < units:
            log.warning(
                "FGD chose GPU %s which cannot hold %d units; using best fit", chosen, units
            )
            return best_fit(free_units, units)
        return chosen


def make_chooser(gpu_model: str = "") -> tuple[Chooser, str]:
    """FGD when the allocator package is importable, else best fit; returns (chooser, name)."""
    try:
        return FgdChooser(gpu_model), "fgd"
    except ImportError:
        return best_fit, "best-fit"
