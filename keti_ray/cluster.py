"""Cluster model: nodes with GPUs shared in thousandths ("milli"), pod requests and placements.

The state is kept as numpy arrays (one row per node, one column per GPU slot) so that the
allocators can score every node at once; `allocate` and `release` are the only mutators and
they check every invariant before changing anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from keti_ray.shares import MILLI_PER_GPU

MAX_GPUS_PER_NODE = 8
MAX_GPUS_PER_POD = 8


class ModelError(ValueError):
    """A request, node or placement that breaks the cluster model's rules.

    `field` names the offending field where there is one (for API and loader errors).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AllocationError(ModelError):
    """An allocate/release that would break an invariant; the state is left unchanged."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node as a node list describes it (capacity, not usage)."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpus: int
    model: str = ""

    def __post_init__(self) -> None:
        for field_name in ("cpu_milli", "memory_mib", "num_gpus"):
            value = getattr(self, field_name)
            if not isinstance(value, int | np.integer) or value < 0:
                raise ModelError(
                    f"node {self.name!r}: {field_name} must be a non-negative integer, "
                    f"got {value!r}"
                )
        if self.num_gpus > MAX_GPUS_PER_NODE:
            raise ModelError(
                f"node {self.name!r}: num_gpus must be 0-{MAX_GPUS_PER_NODE}, got {self.num_gpus}"
            )
        if self.num_gpus > 0 and not self.model:
            raise ModelError(f"node {self.name!r}: a GPU node needs a GPU model")


@dataclass(frozen=True, slots=True)
class PodRequest:
    """What a pod asks for. `gpu_milli` is the share of ONE GPU (1000 = a whole GPU).

    `gpu_spec` is the set of GPU models the pod accepts; empty means any model.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_spec: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        problems = pod_request_problems(
            self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli
        )
        if problems:
            field, _ = problems[0]
            text = "; ".join(f"{f} {msg}" for f, msg in problems)
            raise ModelError(f"pod {self.name!r}: {text}", field=field)
        if not isinstance(self.gpu_spec, frozenset):
            object.__setattr__(self, "gpu_spec", frozenset(self.gpu_spec))

    @property
    def is_shared(self) -> bool:
        """A fractional single-GPU request (shares a GPU with other pods)."""
        return self.num_gpu == 1 and self.gpu_milli < MILLI_PER_GPU

    @property
    def gpu_request_milli(self) -> int:
        """Total GPU milli requested (num_gpu x gpu_milli)."""
        return self.num_gpu * self.gpu_milli

    @property
    def shape(self) -> tuple[int, int, int, frozenset[str]]:
        """The shape FGD groups pods by: (cpu_milli, num_gpu, gpu_milli, gpu_spec)."""
        return (self.cpu_milli, self.num_gpu, self.gpu_milli, self.gpu_spec)


def pod_request_problems(
    cpu_milli: int, memory_mib: int, num_gpu: int, gpu_milli: int
) -> list[tuple[str, str]]:
    """Every rule a pod request breaks, as (field, what is accepted and what was given)."""
    problems: list[tuple[str, str]] = []
    for name, value in (
        ("cpu_milli", cpu_milli),
        ("memory_mib", memory_mib),
        ("num_gpu", num_gpu),
        ("gpu_milli", gpu_milli),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            problems.append((name, f"must be a non-negative integer, got {value!r}"))
    if problems:
        return problems
    if num_gpu > MAX_GPUS_PER_POD:
        problems.append(("num_gpu", f"must be 0-{MAX_GPUS_PER_POD}, got {num_gpu}"))
    if gpu_milli > MILLI_PER_GPU:
        problems.append(
            ("gpu_milli", f"must be 0-{MILLI_PER_GPU} (share of one GPU), got {gpu_milli}")
        )
    if num_gpu > 1 and gpu_milli != MILLI_PER_GPU:
        problems.append(
            (
                "gpu_milli",
                f"must be {MILLI_PER_GPU} when num_gpu > 1 (whole GPUs only), got {gpu_milli}",
            )
        )
    if num_gpu == 0 and gpu_milli != 0:
        problems.append(("gpu_milli", f"must be 0 when num_gpu is 0, got {gpu_milli}"))
    if num_gpu >= 1 and gpu_milli == 0:
        problems.append(("gpu_milli", "must be 1-1000 when num_gpu >= 1, got 0"))
    return problems


def gpu_tag(pod: PodRequest) -> int:
    """Column of `ClusterState.pod_tags` for a GPU pod: 0 = shared GPU, k = k whole GPUs."""
    return 0 if pod.is_shared else pod.num_gpu


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a pod runs: a node, and for GPU pods which GPUs and how much of each."""

    node: int
    gpus: tuple[int, ...] = ()
    milli: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.gpus) != len(self.milli):
            raise ModelError(
                f"placement: gpus {self.gpus} and milli {self.milli} must have the same length"
            )
        if len(set(self.gpus)) != len(self.gpus):
            raise ModelError(f"placement: a GPU index appears twice in {self.gpus}")


class ClusterState:
    """Free resources of every node, and which pod holds what.

    Arrays (row = node):
      cpu_free, mem_free: int64 [N]
      gpu_free: int64 [N, 8], free milli per GPU slot; slots at or beyond a node's
        `gpu_count` hold 0 and never fit anything (every GPU request is at least 1 milli)
      gpu_count: int64 [N]; model_code: int64 [N] indexing `models` (-1 = no GPU)
    """

    def __init__(self, specs: Sequence[NodeSpec]) -> None:
        if not specs:
            raise ModelError("a cluster needs at least one node")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ModelError(f"node name {dup!r} appears more than once")
        self.specs: tuple[NodeSpec, ...] = tuple(specs)
        self.names: list[str] = names
        self.index: dict[str, int] = {n: i for i, n in enumerate(names)}
        self.models: list[str] = sorted({s.model for s in specs if s.num_gpus > 0})
        model_index = {m: i for i, m in enumerate(self.models)}
        n = len(specs)
        self.cpu_cap = np.array([s.cpu_milli for s in specs], dtype=np.int64)
        self.mem_cap = np.array([s.memory_mib for s in specs], dtype=np.int64)
        self.gpu_count = np.array([s.num_gpus for s in specs], dtype=np.int64)
        self.model_code = np.array(
            [model_index[s.model] if s.num_gpus > 0 else -1 for s in specs], dtype=np.int64
        )
        self.gpu_exists = np.arange(MAX_GPUS_PER_NODE)[None, :] < self.gpu_count[:, None]
        self.gpu_cap = np.where(self.gpu_exists, MILLI_PER_GPU, 0).astype(np.int64)
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        self.gpu_free = self.gpu_cap.copy()
        self.placements: dict[str, tuple[PodRequest, Placement]] = {}
        self.num_nodes = n
        self.total_gpu_milli = int(self.gpu_cap.sum())
        # Pods on each node by GPU tag (column 0: shared GPU, k: k whole GPUs); GpuClustering
        # keeps pods with the same tag together.
        self.pod_tags = np.zeros((n, MAX_GPUS_PER_POD + 1), dtype=np.int64)
        # Bumped on every change of a node; lets allocators' caches see which rows are stale.
        self.node_version = np.zeros(n, dtype=np.int64)

    @classmethod
    def from_specs(cls, specs: Iterable[NodeSpec]) -> ClusterState:
        return cls(list(specs))

    def copy(self) -> ClusterState:
        """An independent copy (for what-if evaluation)."""
        other = object.__new__(ClusterState)
        other.__dict__.update(self.__dict__)
        for name in ("cpu_free", "mem_free", "gpu_free", "pod_tags", "node_version"):
            setattr(other, name, getattr(self, name).copy())
        other.placements = dict(self.placements)
        return other

    # ---- queries -------------------------------------------------------------------------

    def model_mask(self, pod: PodRequest) -> np.ndarray:
        """Nodes whose GPU model the pod accepts (all nodes for CPU-only or any-model pods)."""
        if pod.num_gpu == 0 or not pod.gpu_spec:
            return np.ones(self.num_nodes, dtype=bool)
        codes = [self.models.index(m) for m in pod.gpu_spec if m in self.models]
        return np.isin(self.model_code, codes)

    def feasible_nodes(self, pod: PodRequest) -> np.ndarray:
        """Boolean mask of nodes that can host the pod now (CPU, memory, GPU share, model)."""
        ok = (self.cpu_free >= pod.cpu_milli) & (self.mem_free >= pod.memory_mib)
        if pod.num_gpu > 0:
            fitting = (self.gpu_free >= pod.gpu_milli).sum(axis=1)
            ok &= fitting >= pod.num_gpu
            ok &= self.model_mask(pod)
        return ok

    def gpu_allocated_milli(self) -> int:
        return int(self.total_gpu_milli - self.gpu_free.sum())

    def unallocated_gpu_pct(self) -> float:
        """Share of the cluster's GPU capacity that no pod holds, in percent."""
        if self.total_gpu_milli == 0:
            return 0.0
        return 100.0 * float(self.gpu_free.sum()) / self.total_gpu_milli

    # ---- mutators ------------------------------------------------------------------------

    def default_gpus(self, pod: PodRequest, node: int) -> tuple[int, ...]:
        """Lowest-index GPUs with room for the pod on `node` (whole-GPU or first-fit share)."""
        if pod.num_gpu == 0:
            return ()
        free = self.gpu_free[node]
        idx = np.flatnonzero(free >= pod.gpu_milli)[: pod.num_gpu]
        return tuple(int(i) for i in idx)

    def placement_for(
        self, pod: PodRequest, node: int, gpus: Sequence[int] | None = None
    ) -> Placement:
        """A Placement on `node`, using `gpus` or the lowest-index GPUs that fit."""
        chosen = tuple(gpus) if gpus is not None else self.default_gpus(pod, node)
        return Placement(node=node, gpus=chosen, milli=(pod.gpu_milli,) * len(chosen))

    def check(self, pod: PodRequest, placement: Placement) -> None:
        """Raise AllocationError naming the violated invariant if the placement is not valid."""
        where = f"pod {pod.name!r}"
        if pod.name in self.placements:
            raise AllocationError(f"{where} is already placed (a pod is placed once)")
        n = placement.node
        if not 0 <= n < self.num_nodes:
            raise AllocationError(f"{where}: node index {n} is outside 0-{self.num_nodes - 1}")
        node = self.names[n]
        if self.cpu_free[n] < pod.cpu_milli:
            raise AllocationError(
                f"{where}: node {node!r} has {self.cpu_free[n]} cpu_milli free, "
                f"needs {pod.cpu_milli}"
            )
        if self.mem_free[n] < pod.memory_mib:
            raise AllocationError(
                f"{where}: node {node!r} has {self.mem_free[n]} memory_mib free, "
                f"needs {pod.memory_mib}"
            )
        if len(placement.gpus) != pod.num_gpu:
            raise AllocationError(
                f"{where}: asks for {pod.num_gpu} GPU(s), placement gives {len(placement.gpus)}"
            )
        if pod.num_gpu and not self.model_mask(pod)[n]:
            raise AllocationError(
                f"{where}: node {node!r} has GPU model {self.specs[n].model!r}, pod accepts "
                f"{sorted(pod.gpu_spec)}"
            )
        for g, m in zip(placement.gpus, placement.milli, strict=True):
            if not 0 <= g < self.gpu_count[n]:
                raise AllocationError(
                    f"{where}: node {node!r} has {self.gpu_count[n]} GPU(s), no GPU index {g}"
                )
            if m != pod.gpu_milli:
                raise AllocationError(
                    f"{where}: placement gives GPU {g} {m} milli, pod asks {pod.gpu_milli}"
                )
            if self.gpu_free[n, g] < m:
                raise AllocationError(
                    f"{where}: GPU {g} on node {node!r} has {self.gpu_free[n, g]} milli free, "
                    f"needs {m} (no GPU over {MILLI_PER_GPU} milli)"
                )

    def allocate(self, pod: PodRequest, placement: Placement) -> None:
        """Book the pod; all-or-nothing."""
        self.check(pod, placement)
        n = placement.node
        self.cpu_free[n] -= pod.cpu_milli
        self.mem_free[n] -= pod.memory_mib
        for g, m in zip(placement.gpus, placement.milli, strict=True):
            self.gpu_free[n, g] -= m
        self.placements[pod.name] = (pod, placement)
        if pod.num_gpu:
            self.pod_tags[n, gpu_tag(pod)] += 1
        self._touched(n)

    def release(self, pod_name: str) -> Placement | None:
        """Free what the pod holds. Releasing an unknown pod is a no-op (returns None)."""
        entry = self.placements.pop(pod_name, None)
        if entry is None:
            return None
        pod, placement = entry
        n = placement.node
        self.cpu_free[n] += pod.cpu_milli
        self.mem_free[n] += pod.memory_mib
        for g, m in zip(placement.gpus, placement.milli, strict=True):
            self.gpu_free[n, g] += m
        if pod.num_gpu:
            self.pod_tags[n, gpu_tag(pod)] -= 1
        self._touched(n)
        return placement

    def _touched(self, node: int) -> None:
        self.node_version[node] += 1
