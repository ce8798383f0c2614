"""The FGD paper's replay protocol: tune a pod list to a multiple of the cluster's GPUs,
shuffle it with a seed, offer pods one by one (a pod that fits nowhere is skipped, nobody
leaves), and record the unallocated GPU share as the arrived workload grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from keti_ray.allocators.base import Allocator
from keti_ray.cluster import ClusterState, NodeSpec, PodRequest
from keti_ray.fragmentation import FragmentationModel, TypicalPods, fragmentation_pct

MAX_ARRIVED_PCT = 130


def tune_workload(
    pods: Sequence[PodRequest], capacity_milli: int, ratio: float, seed: int
) -> list[PodRequest]:
    """The reference simulator's workload: shuffle, then tune GPU requests to `ratio` x capacity.

    The pod list is shuffled with the seed; below the target, clones drawn uniformly with
    replacement from the original list are appended (named `<pod>-tuned-<i>`) until the next
    draw would pass the target; above it, random pods are dropped until the total is at most
    the target.
    """
    if ratio <= 0:
        raise ValueError(f"tune ratio must be > 0, got {ratio}")
    if not pods:
        raise ValueError("tune needs at least one pod")
    rng = np.random.default_rng(seed)
    target = ratio * capacity_milli
    chosen = [pods[i] for i in rng.permutation(len(pods))]
    total = sum(p.gpu_request_milli for p in chosen)
    if total > target:
        while total > target:
            removed = chosen.pop(int(rng.integers(len(chosen))))
            total -= removed.gpu_request_milli
    elif total < target:
        for i in range(10 * len(pods) * max(1, int(np.ceil(ratio)))):
            clone = pods[int(rng.integers(len(pods)))]
            if total + clone.gpu_request_milli > target:
                break
            chosen.append(replace(clone, name=f"{clone.name}-tuned-{i}"))
            total += clone.gpu_request_milli
    return chosen


class ArrivalBuckets:
    """The paper's curve: after every offered pod, the allocated GPU % goes into the bucket of
    its arrived GPU % (rounded half to even); a point is the mean of its bucket, or of the
    neighbouring buckets where it is empty (the reference's merge scripts do the same).
    """

    def __init__(self) -> None:
        self.sums = np.zeros(MAX_ARRIVED_PCT + 2)
        self.counts = np.zeros(MAX_ARRIVED_PCT + 2, dtype=np.int64)

    def add(self, arrived_pct: float, allocated_pct: float) -> None:
        bucket = int(np.round(arrived_pct))
        if bucket <= MAX_ARRIVED_PCT + 1:
            self.sums[bucket] += round(allocated_pct, 2)
            self.counts[bucket] += 1

    def curve(self) -> np.ndarray:
        """Mean allocated GPU % at each arrived % 0..130 (NaN where no row is near)."""
        out = np.full(MAX_ARRIVED_PCT + 1, np.nan)
        for pct in range(MAX_ARRIVED_PCT + 1):
            if self.counts[pct]:
                out[pct] = self.sums[pct] / self.counts[pct]
                continue
            lo, hi = max(pct - 1, 0), pct + 2
            n = self.counts[lo:hi].sum()
            if n:
                out[pct] = self.sums[lo:hi].sum() / n
        return out


@dataclass
class ReplayResult:
    """One replay: the unallocated-GPU curve and end-of-replay figures."""

    policy: str
    seed: int
    unallocated_gpu_pct: np.ndarray  # [131]: index = arrived %, NaN where never reached
    frag_pct: float  # FGD fragmentation at the end, % of GPU capacity
    pods_offered: int
    pods_placed: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def at(self, arrived_pct: int) -> float:
        return float(self.unallocated_gpu_pct[arrived_pct])


@dataclass
class ReplayProgress:
    """A replay part-way through: resumable, so that policy search can replay the shared FGD
    prefix of a workload once and branch every candidate policy from a copy of it."""

    state: ClusterState
    buckets: ArrivalBuckets
    arrived: int = 0
    placed: int = 0
    next_index: int = 0

    @classmethod
    def start(cls, nodes: Sequence[NodeSpec]) -> ReplayProgress:
        return cls(ClusterState(nodes), ArrivalBuckets())

    def copy(self) -> ReplayProgress:
        buckets = ArrivalBuckets()
        buckets.sums[:] = self.buckets.sums
        buckets.counts[:] = self.buckets.counts
        return replace(self, state=self.state.copy(), buckets=buckets)


def offer_pods(
    progress: ReplayProgress,
    workload: Sequence[PodRequest],
    allocator: Allocator,
    stop: Callable[[ClusterState], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> ReplayProgress:
    """Offer pods from `progress.next_index` on (in place) until the workload ends or `stop`."""
    state = progress.state
    capacity = state.total_gpu_milli
    for i in range(progress.next_index, len(workload)):
        if stop is not None and stop(state):
            break
        pod = workload[i]
        placement = allocator.place(state, pod)
        if placement is not None:
            state.allocate(pod, placement)
            progress.placed += 1
        progress.arrived += pod.gpu_request_milli
        progress.buckets.add(
            100.0 * progress.arrived / capacity, 100.0 - state.unallocated_gpu_pct()
        )
        progress.next_index = i + 1
        if on_step is not None:
            on_step(i + 1, len(workload))
    return progress


def replay(
    nodes: Sequence[NodeSpec],
    workload: Sequence[PodRequest],
    allocator: Allocator,
    seed: int,
    typical: TypicalPods,
    on_step: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Offer an already tuned and shuffled workload to `allocator` on a fresh cluster."""
    allocator.reset(seed)
    start = time.perf_counter()
    progress = offer_pods(ReplayProgress.start(nodes), workload, allocator, on_step=on_step)
    seconds = time.perf_counter() - start
    state = progress.state
    frag = fragmentation_pct(state, FragmentationModel(typical, state.models))
    return ReplayResult(
        policy=allocator.name,
        seed=seed,
        unallocated_gpu_pct=100.0 - progress.buckets.curve(),
        frag_pct=frag,
        pods_offered=len(workload),
        pods_placed=progress.placed,
        seconds=seconds,
    )
