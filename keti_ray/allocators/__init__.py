"""Allocators behind one interface, by name: random, dotprod, clustering, packing, bestfit, fgd."""

from __future__ import annotations

from collections.abc import Callable

from keti_ray.allocators.base import Allocator
from keti_ray.allocators.bestfit import BestFitAllocator
from keti_ray.allocators.clustering import GpuClusteringAllocator
from keti_ray.allocators.dotprod import DotProdAllocator
from keti_ray.allocators.fgd import FGDAllocator
from keti_ray.allocators.packing import GpuPackingAllocator
from keti_ray.allocators.random import RandomAllocator
from keti_ray.fragmentation import TypicalPods

_FACTORIES: dict[str, Callable[[TypicalPods | None, int | None], Allocator]] = {
    "random": lambda typical, seed: RandomAllocator(seed),
    "dotprod": lambda typical, seed: DotProdAllocator(seed),
    "clustering": lambda typical, seed: GpuClusteringAllocator(seed),
    "packing": lambda typical, seed: GpuPackingAllocator(seed),
    "bestfit": lambda typical, seed: BestFitAllocator(seed),
    "fgd": lambda typical, seed: FGDAllocator(typical, seed),
}

HEURISTICS: tuple[str, ...] = tuple(_FACTORIES)

# Display names used by the FGD paper's table.
PAPER_NAMES = {
    "random": "Random",
    "dotprod": "DotProd",
    "clustering": "GpuClustering",
    "packing": "GpuPacking",
    "bestfit": "BestFit",
    "fgd": "FGD",
}


def make_allocator(
    name: str, typical: TypicalPods | None = None, seed: int | None = None
) -> Allocator:
    """An allocator by name; `typical` is FGD's typical-pod mix (None = a default mix)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"policy {name!r} is unknown; accepted: {', '.join(HEURISTICS)}") from None
    return factory(typical, seed)


__all__ = ["HEURISTICS", "PAPER_NAMES", "Allocator", "make_allocator"]
