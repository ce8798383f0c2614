"""Rollout allocators: FGD's best few candidates, each judged by replaying FGD over a future.

With the real future (the pods that will actually arrive) this is the headroom study's
clairvoyant reference: it still places every pod that fits, in arrival order, but it picks
among FGD's top candidates the one after which FGD, offered the next `horizon` real pods,
allocates the most GPU. With futures drawn from the workload's shape distribution instead, it
is a teacher that sees no future. Both are slow (they only label or bound, never serve).

A rollout's value is the GPU allocated at its end minus `frag_weight` x FGD's fragmentation
then. Rollouts only start once the cluster is `start_pct` allocated (before that no candidate can
make a future pod fail within a short horizon, so every rollout ties) and ties go to FGD's
own choice, so the policy is FGD wherever the lookahead sees no difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from keti_ray.allocators.base import Allocator
from keti_ray.allocators.fgd import FGDAllocator, _ShapeScores
from keti_ray.cluster import ClusterState, Placement, PodRequest
from keti_ray.fragmentation import TypicalPods

# future(state, pod) -> the pods offered after `pod`, in order, for each sampled future.
FutureFn = Callable[[ClusterState, PodRequest], list[list[PodRequest]]]


def clone_fgd(
    fgd: FGDAllocator, state: ClusterState, cls: type[FGDAllocator] | None = None
) -> FGDAllocator:
    """An FGD whose caches are copies bound to `state` (a copy of the state `fgd` knows).

    The caches are keyed by node_version, which `ClusterState.copy` keeps, so the copy starts
    warm and recomputes only the nodes the rollout changes. `cls` (default: the same class)
    lets a subclass with extra side effects be cloned as plain FGD.
    """
    other = object.__new__(cls or type(fgd))
    other.__dict__.update(fgd.__dict__)
    other._frag = fgd._frag.copy()
    other._frag_stamp = fgd._frag_stamp.copy()
    other._shapes = {
        k: _ShapeScores(v.score.copy(), v.gpu.copy(), v.stamp.copy())
        for k, v in fgd._shapes.items()
    }
    other._bound = id(state)
    return other


def node_signature(state: ClusterState, node: int) -> tuple:
    """Nodes with the same signature are interchangeable for every future pod."""
    count = int(state.gpu_count[node])
    return (
        tuple(sorted(state.gpu_free[node, :count].tolist())),
        int(state.cpu_free[node]),
        int(state.mem_free[node]),
        int(state.model_code[node]),
    )


class RolloutAllocator(Allocator):
    """FGD's top `top` distinct candidates, judged by FGD rollouts over `future` pods."""

    name = "rollout"

    def __init__(
        self,
        typical: TypicalPods,
        future: FutureFn,
        seed: int | None = None,
        top: int = 3,
        start_pct: float = 70.0,
        frag_weight: float = 1.0,
    ) -> None:
        self.typical = typical
        self.frag_weight = frag_weight
        self.future = future
        self.top = top
        self.start_pct = start_pct
        self.fgd = FGDAllocator(typical, seed)
        super().__init__(seed)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.fgd.reset(seed)
        self.rollouts = 0
        self.changed = 0
        self.decisions = 0

    def candidates(self, state: ClusterState, pod: PodRequest) -> list[Placement]:
        """FGD's choice first, then FGD's next best nodes with a different signature."""
        first = self.fgd.place(state, pod)
        if first is None:
            return []
        out = [first]
        feasible = state.feasible_nodes(pod)
        rows = np.flatnonzero(feasible)
        if rows.size < 2 or self.top < 2:
            return out
        cache = self.fgd._scored(state, pod, rows)
        rank = self.fgd.node_priority(state.num_nodes)
        order = rows[np.lexsort((rank[rows], -cache.score[rows]))]
        seen = {node_signature(state, first.node)}
        for node in order[: 64 * self.top].tolist():
            if len(out) >= self.top:
                break
            sig = node_signature(state, node)
            if sig in seen:
                continue
            seen.add(sig)
            if pod.is_shared:
                out.append(Placement(node, (int(cache.gpu[node]),), (pod.gpu_milli,)))
            else:
                out.append(state.placement_for(pod, node))
        return out

    def rollout_value(
        self, state: ClusterState, pod: PodRequest, placement: Placement, future: Sequence
    ) -> float:
        """GPU milli allocated after placing `pod` there and FGD placing `future`, minus
        `frag_weight` x the cluster's FGD fragmentation then (the free GPU that typical pods
        could not use: a terminal value, so a short horizon still tells placements apart)."""
        trial = state.copy()
        trial.allocate(pod, placement)
        fgd = clone_fgd(self.fgd, trial)
        for other in future:
            choice = fgd.place(trial, other)
            if choice is not None:
                trial.allocate(other, choice)
        self.rollouts += 1
        value = float(trial.gpu_allocated_milli())
        if self.frag_weight:
            value -= self.frag_weight * float(fgd.node_fragmentation(trial).sum())
        return value

    def place(self, state: ClusterState, pod: PodRequest) -> Placement | None:
        allocated_pct = 100.0 - state.unallocated_gpu_pct()
        if allocated_pct < self.start_pct or pod.num_gpu == 0:
            return self.fgd.place(state, pod)
        cands = self.candidates(state, pod)
        if len(cands) < 2:
            return cands[0] if cands else None
        self.decisions += 1
        futures = self.future(state, pod)
        values = np.zeros(len(cands))
        for future in futures:
            for i, cand in enumerate(cands):
                values[i] += self.rollout_value(state, pod, cand, future)
        best = int(np.argmax(values))  # first maximum: FGD's choice wins ties
        self.changed += int(best != 0)
        return cands[best]


def real_future(workload: Sequence[PodRequest], horizon: int) -> FutureFn:
    """The clairvoyant future: the next `horizon` pods of the workload itself."""
    position = {p.name: i for i, p in enumerate(workload)}

    def future(state: ClusterState, pod: PodRequest) -> list[list[PodRequest]]:
        i = position[pod.name]
        return [list(workload[i + 1 : i + 1 + horizon])]

    return future


def sampled_future(pods: Sequence[PodRequest], horizon: int, samples: int, seed: int) -> FutureFn:
    """Futures drawn (with replacement) from a pod list: the workload's shape distribution."""
    rng = np.random.default_rng(seed)
    counter = [0]

    def future(state: ClusterState, pod: PodRequest) -> list[list[PodRequest]]:
        out = []
        for _ in range(samples):
            picks = rng.integers(len(pods), size=horizon)
            counter[0] += 1
            tag = counter[0]
            out.append(
                [
                    PodRequest(
                        f"~rollout-{tag}-{j}",
                        pods[k].cpu_milli,
                        pods[k].memory_mib,
                        pods[k].num_gpu,
                        pods[k].gpu_milli,
                        pods[k].gpu_spec,
                    )
                    for j, k in enumerate(picks.tolist())
                ]
            )
        return out

    return future


__all__ = ["RolloutAllocator", "clone_fgd", "real_future", "sampled_future"]
