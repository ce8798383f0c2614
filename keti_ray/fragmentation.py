"""FGD's fragmentation measure (Weng et al., USENIX ATC 2023) over typical pods.

A node's fragmentation for one typical pod m: if m is a GPU shape that can run on the node
(enough CPU, a GPU model it accepts, and enough GPUs with room), the free milli of the GPUs
whose free share is smaller than m's gpu_milli; otherwise (m cannot run there, or m is
CPU-only) all of the node's free GPU milli. The node's fragmentation is the
popularity-weighted sum over typical pods. Everything here works on a batch of node states
at once so that scoring a whole cluster is a handful of numpy operations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from keti_ray.cluster import MILLI_PER_GPU, ClusterState, PodRequest

DEFAULT_POPULARITY = 0.95

Shape = tuple[int, int, int, frozenset[str]]


@dataclass(frozen=True)
class TypicalPods:
    """The most frequent pod shapes and their renormalised frequencies."""

    shapes: tuple[Shape, ...]
    weights: np.ndarray  # float64 [T], sums to 1

    @classmethod
    def from_pods(
        cls, pods: Iterable[PodRequest], popularity: float = DEFAULT_POPULARITY
    ) -> TypicalPods:
        """Most frequent shapes first (CPU-only included) until they cover `popularity`."""
        if not 0 < popularity <= 1:
            raise ValueError(f"popularity must be in (0, 1], got {popularity}")
        counts = Counter(p.shape for p in pods)
        if not counts:
            raise ValueError("typical pods need at least one pod")
        total = sum(counts.values())
        # Most frequent first; ties as the reference orders them (larger cpu, gpu_milli,
        # num_gpu, then model string first).
        ordered = sorted(counts.items(), key=lambda kv: (kv[1], _shape_key(kv[0])), reverse=True)
        chosen: list[tuple[Shape, int]] = []
        covered = 0
        for shape, count in ordered:
            if covered >= popularity * total:
                break
            chosen.append((shape, count))
            covered += count
        weights = np.array([c for _, c in chosen], dtype=np.float64) / covered
        return cls(shapes=tuple(s for s, _ in chosen), weights=weights)

    @classmethod
    def from_shapes(cls, shapes: Sequence[Shape], weights: Sequence[float]) -> TypicalPods:
        w = np.asarray(weights, dtype=np.float64)
        if len(shapes) != len(w) or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("typical pods need one non-negative weight per shape")
        return cls(shapes=tuple(shapes), weights=w / w.sum())

    @classmethod
    def default(cls) -> TypicalPods:
        """A generic mix for when no workload is known (roughly the openb default list)."""
        any_model: frozenset[str] = frozenset()
        shapes = [
            (8000, 1, 1000, any_model),
            (8000, 0, 0, any_model),
            (4000, 1, 810, any_model),
            (4000, 1, 470, any_model),
            (4000, 1, 320, any_model),
            (4000, 1, 650, any_model),
            (2000, 1, 230, any_model),
            (32000, 8, 1000, any_model),
        ]
        return cls.from_shapes(shapes, [48, 13, 13, 9, 4, 3, 2, 1])

    def __len__(self) -> int:
        return len(self.shapes)


def _shape_key(shape: Shape) -> tuple:
    cpu, num, milli, spec = shape
    return (cpu, milli, num, "|".join(sorted(spec)))


class FragmentationModel:
    """TypicalPods compiled against one cluster's GPU models, for batch evaluation."""

    def __init__(self, typical: TypicalPods, models: Sequence[str]) -> None:
        self.typical = typical
        self.models = list(models)
        t = len(typical)
        self.cpu = np.array([s[0] for s in typical.shapes], dtype=np.int64)
        self.num = np.array([s[1] for s in typical.shapes], dtype=np.int64)
        self.milli = np.array([s[2] for s in typical.shapes], dtype=np.int64)
        self.weights = typical.weights
        # accessible[t, model_code + 1]: column 0 stands for "no GPU model" (CPU-only node).
        access = np.zeros((t, len(self.models) + 1), dtype=bool)
        for i, (_, num, _, spec) in enumerate(typical.shapes):
            if num == 0:
                continue
            for j, model in enumerate(self.models):
                access[i, j + 1] = not spec or model in spec
        self.access = access
        self.gpu_rows = np.flatnonzero(self.milli > 0)
        self.cpu_only_weight = float(self.weights[self.milli == 0].sum())
        # Distinct GPU shares among typical pods: per-share sums are shared between shapes.
        self.levels, self.level_of = np.unique(self.milli[self.gpu_rows], return_inverse=True)

    def node_fragmentation(
        self, gpu_free: np.ndarray, cpu_free: np.ndarray, model_code: np.ndarray
    ) -> np.ndarray:
        """Fragmentation (milli) of each node state in a batch.

        gpu_free: int [M, G] free milli per GPU (absent GPUs hold 0); cpu_free, model_code: [M].
        """
        total = gpu_free.sum(axis=1).astype(np.float64)
        frag = total * self.cpu_only_weight
        if len(self.gpu_rows) == 0:
            return frag
        levels = self.levels
        fits = gpu_free[:, :, None] >= levels[None, None, :]  # [M, G, L]
        fit_count = fits.sum(axis=1)  # [M, L]
        below_sum = np.where(fits, 0, gpu_free[:, :, None]).sum(axis=1)  # [M, L]
        rows = self.gpu_rows
        lvl = self.level_of
        can_host = fit_count[:, lvl] >= self.num[rows][None, :]  # [M, Tg]
        cpu_ok = cpu_free[:, None] >= self.cpu[rows][None, :]
        accessible = self.access[rows][:, model_code + 1].T  # [M, Tg]
        satisfied = can_host & cpu_ok & accessible
        per_pod = np.where(satisfied, below_sum[:, lvl], total[:, None])
        return frag + per_pod @ self.weights[rows]

    def cluster_fragmentation(self, state: ClusterState) -> np.ndarray:
        """Fragmentation of every node of a cluster state."""
        return self.node_fragmentation(state.gpu_free, state.cpu_free, state.model_code)


def fragmentation_pct(state: ClusterState, model: FragmentationModel) -> float:
    """The cluster's fragmentation as a percentage of its GPU capacity."""
    if state.total_gpu_milli == 0:
        return 0.0
    return 100.0 * float(model.cluster_fragmentation(state).sum()) / state.total_gpu_milli


__all__ = ["MILLI_PER_GPU", "FragmentationModel", "TypicalPods", "fragmentation_pct"]
