"""Candidate placements for one pod, and their features, for the learned allocator.

The policy never scores the whole cluster: it picks one of at most K candidates. They are
FGD's own choice (always present, so the policy can always do what FGD does), FGD's next best
nodes by fragmentation change, BestFit's choice, and a few random feasible nodes. A shared pod
gets, on each candidate node, the GPU FGD would use there. FGD's per-node scores are cached
per pod shape exactly as the FGD allocator does, so one decision stays well under a
millisecond of numpy work on the 1,213-node cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keti_ray.allocators.fgd import FGDAllocator, _ShapeScores, take_first_fit
from keti_ray.allocators.scored import MAX_SPEC_CPU_MILLI, MAX_SPEC_GPU_MILLI
from keti_ray.cluster import MILLI_PER_GPU, ClusterState, Placement, PodRequest
from keti_ray.fragmentation import FragmentationModel, Shape, TypicalPods

# Per-candidate feature columns (order matters: the network reads them by position).
CANDIDATE_FEATURES = (
    "fgd_score",  # FGD's integer score / 100
    "frag_delta",  # fragmentation change of the node, in GPUs (milli / 1000)
    "frag_delta_vs_best",  # this delta minus the smallest among candidates, in GPUs
    "is_fgd_choice",
    "is_bestfit_choice",
    "is_random_extra",
    "node_frag_before",  # node fragmentation / node GPU capacity
    "gpu_free_before",  # node free GPU milli / 8000
    "gpu_free_after",
    "gpu_count",  # / 8
    "full_gpus_after",  # fully free GPUs after placing / 8
    "cpu_free_after",  # share of the node's CPU left
    "mem_free_after",  # share of the node's memory left
    "cpu_free_after_abs",  # CPU milli left / 128000
    "chosen_gpu_free_after",  # shared pod: milli left on its GPU / 1000, else 0
    "bestfit_score",  # BestFit's (1 - weighted leftover), in [0, 1]
    "node_was_empty",
    "node_rank",  # the replay's tie-break rank of the node / nodes (FGD's ties go to the lowest)
    "chosen_gpu_free_before",  # shared pod: milli free on its GPU before / 1000, else 0
    "gpus_full_after",  # node GPUs with 0 milli free after placing / 8
    "gpus_sliver_after",  # ... with 1-199 milli free
    "gpus_mid_after",  # ... with 200-499
    "gpus_high_after",  # ... with 500-999
    "gap_count_before",  # shared: cluster GPUs at the chosen GPU's free level now / GPUs
    "gap_count_after",  # shared: cluster GPUs at its free level after placing / GPUs
    "dead_sliver_after",  # shared: the chosen GPU keeps 1..(smallest typical share - 1) free
    "hole_count_before",  # GPU nodes with as many fully free GPUs as this node now / GPU nodes
    "hole_count_after",  # GPU nodes with as many as this node keeps after placing / GPU nodes
    "breaks_free_node",  # every GPU of the node was fully free, and not all are after
)
GLOBAL_FEATURES = (
    "pod_cpu",  # / 128000
    "pod_num_gpu",  # / 8
    "pod_gpu_milli",  # / 1000
    "pod_is_shared",
    "pod_is_cpu_only",
    "pod_has_model_constraint",
    "cluster_gpu_free",  # unallocated share of GPU capacity
    "cluster_frag",  # FGD fragmentation / GPU capacity
    "whole_gpus_free",  # fully free GPUs / all GPUs (from the live state, like every feature)
    "feasible_share",  # feasible nodes / all nodes
)
NUM_CANDIDATE_FEATURES = len(CANDIDATE_FEATURES)
NUM_GLOBAL_FEATURES = len(GLOBAL_FEATURES)
FEATURE_CLIP = 10.0


class _FGDScorer(FGDAllocator):
    """FGD that also keeps the raw fragmentation change behind each cached score."""

    name = "fgd-scorer"

    def _bind(self, state: ClusterState) -> None:
        if self._bound == id(state) and self._nodes == state.num_nodes:
            return
        super()._bind(state)
        self._deltas: dict[Shape, np.ndarray] = {}

    def scores(self, state: ClusterState, pod: PodRequest, rows: np.ndarray) -> tuple:
        score, gpu, delta = self.scores_and_deltas(state, pod, rows)
        self._delta_store(state, pod)[rows] = delta
        return score, gpu

    def _delta_store(self, state: ClusterState, pod: PodRequest) -> np.ndarray:
        store = self._deltas.get(pod.shape)
        if store is None:
            store = self._deltas[pod.shape] = np.zeros(state.num_nodes)
        return store


class FragCache:
    """Every node's fragmentation, recomputed only where a node changed.

    Kept apart from FGD's own cache on purpose: FGD's integer score flips between 49 and 50
    on a last-bit difference of a zero fragmentation change, and a float sum depends on the
    batch it is computed in, so anything else that refreshed FGD's cache (features, the
    reward) could change FGD's choice. With its own cache FGD's slot stays FGD's choice.
    """

    def __init__(self, typical: TypicalPods) -> None:
        self.typical = typical
        self._bound: int | None = None

    def get(self, state: ClusterState) -> np.ndarray:
        if self._bound != id(state) or len(self._frag) != state.num_nodes:
            self._bound = id(state)
            self.model = FragmentationModel(self.typical, state.models)
            self._frag = np.zeros(state.num_nodes)
            self._stamp = np.full(state.num_nodes, -1, dtype=np.int64)
        stale = np.flatnonzero(self._stamp != state.node_version)
        if stale.size:
            self._frag[stale] = self.model.node_fragmentation(
                state.gpu_free[stale], state.cpu_free[stale], state.model_code[stale]
            )
            self._stamp[stale] = state.node_version[stale]
        return self._frag


@dataclass
class CandidateSet:
    """K candidate placements of one pod, their features and which slots are real.

    Placements are built only for the slot that gets chosen (`placement(i)`); slot
    `fgd_index` is exactly FGD's placement.
    """

    pod: PodRequest
    nodes: np.ndarray  # int64 [M], M <= K valid candidates
    shared_gpus: np.ndarray | None  # shared pod: the GPU used on each candidate node
    fgd_placement: Placement
    features: np.ndarray  # float32 [K, NUM_CANDIDATE_FEATURES], zero rows for padding
    globals: np.ndarray  # float32 [NUM_GLOBAL_FEATURES]
    mask: np.ndarray  # float32 [K], 1 = valid candidate
    fgd_index: int  # slot of FGD's own choice
    state: ClusterState

    @property
    def size(self) -> int:
        return len(self.nodes)

    def placement(self, i: int) -> Placement:
        """The placement of candidate slot `i` (0 <= i < size)."""
        if not 0 <= i < self.size:
            raise IndexError(f"candidate {i} is not valid (0-{self.size - 1})")
        if i == self.fgd_index:
            return self.fgd_placement
        node = int(self.nodes[i])
        if self.shared_gpus is not None:
            gpu = int(self.shared_gpus[i])
            return Placement(node=node, gpus=(gpu,), milli=(self.pod.gpu_milli,))
        return self.state.placement_for(self.pod, node)


class CandidateGenerator:
    """Builds the candidate set of a pod on a cluster state (one instance per replay)."""

    def __init__(
        self,
        typical: TypicalPods,
        k: int = 16,
        random_extra: int = 2,
        seed: int | None = None,
    ) -> None:
        if k < 2:
            raise ValueError(f"k (candidates per decision) must be >= 2, got {k}")
        if not 0 <= random_extra < k - 1:
            raise ValueError(f"random_extra must be 0-{k - 2}, got {random_extra}")
        self.typical = typical
        shares = [s[2] for s in typical.shapes if s[1] == 1 and 0 < s[2] < MILLI_PER_GPU]
        self._smallest_share = min(shares) if shares else MILLI_PER_GPU
        self.k = k
        self.random_extra = random_extra
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Forget caches and reseed (FGD's tie-break ranks and the random extras)."""
        self.fgd = _FGDScorer(self.typical, seed)
        self.frag = FragCache(self.typical)
        self.seed = 0 if seed is None else int(seed)

    def candidates(self, state: ClusterState, pod: PodRequest) -> CandidateSet | None:
        """The pod's candidate set, or None when it fits nowhere.

        Everything here is read from `state` (no counters of earlier calls), so serving, where
        dry runs, priorities and releases happen, computes what training computed.
        """
        feasible = state.feasible_nodes(pod)
        rows = np.flatnonzero(feasible)
        if rows.size == 0:
            return None
        cache, deltas = self._fgd_scores(state, pod, rows)
        fgd_node = self.fgd.pick_best(cache.score, feasible)
        assert fgd_node is not None
        if pod.is_shared:
            fgd_place = Placement(fgd_node, (int(cache.gpu[fgd_node]),), (pod.gpu_milli,))
        else:
            fgd_place = state.placement_for(pod, fgd_node)
        # FGD's next best: highest integer score, then smallest raw delta.
        n_top = self.k - 1 - self.random_extra - 1  # minus FGD's choice, BestFit, extras
        if rows.size > n_top + 1:
            key = -cache.score[rows] * 1e7 + deltas[rows]
            part = np.argpartition(key, n_top)[: n_top + 1]
            top = rows[part[np.argsort(key[part], kind="stable")]]
        else:
            top = rows
        bestfit_node = _bestfit_node(state, pod, rows, self.fgd.node_priority(state.num_nodes))
        chosen: list[int] = [fgd_node]
        seen = {fgd_node}
        for node in (bestfit_node, *top.tolist()):
            if len(chosen) >= self.k - self.random_extra:
                break
            if node not in seen:
                chosen.append(int(node))
                seen.add(int(node))
        random_flags = [0.0] * len(chosen)
        if self.random_extra and rows.size > len(chosen):
            pool = rows[~np.isin(rows, chosen)]
            picks = self._extra_rng(state, pod).choice(
                pool, size=min(self.random_extra, pool.size), replace=False
            )
            for node in picks.tolist():
                chosen.append(int(node))
                random_flags.append(1.0)
        nodes = np.asarray(chosen, dtype=np.int64)
        gpus = cache.gpu[nodes].copy() if pod.is_shared else None
        if gpus is not None:
            gpus[0] = fgd_place.gpus[0]
        cset = CandidateSet(
            pod=pod,
            nodes=nodes,
            shared_gpus=gpus,
            fgd_placement=fgd_place,
            features=np.zeros((self.k, NUM_CANDIDATE_FEATURES), dtype=np.float32),
            globals=np.zeros(NUM_GLOBAL_FEATURES, dtype=np.float32),
            mask=np.zeros(self.k, dtype=np.float32),
            fgd_index=0,
            state=state,
        )
        cset.mask[: len(nodes)] = 1.0
        if len(nodes) == 1:
            return cset  # nothing to choose: skip the features
        whole = (state.gpu_free == MILLI_PER_GPU).sum(axis=1)  # fully free GPUs per node
        feats = self._features(state, pod, nodes, gpus, deltas, cache.score, whole)
        feats[0, 3] = 1.0
        feats[:, 4] = (nodes == bestfit_node).astype(np.float32)
        feats[:, 5] = np.asarray(random_flags, dtype=np.float32)
        cset.features[: len(nodes)] = feats
        cset.globals[:] = self._globals(state, pod, rows.size, whole)
        return cset

    # ---- helpers -----------------------------------------------------------------------------

    def _extra_rng(self, state: ClusterState, pod: PodRequest) -> np.random.Generator:
        """Random extras drawn from a seed of (replay seed, cluster state, pod shape): the
        same state and pod always get the same candidates, however many dry runs, extender
        priorities or other calls came before (no generator state carried between calls)."""
        key = [
            self.seed + 7919,
            int(state.gpu_free.sum()),
            int(state.cpu_free.sum()),
            len(state.placements),
            pod.cpu_milli,
            pod.num_gpu,
            pod.gpu_milli,
        ]
        return np.random.default_rng(key)

    def _fgd_scores(
        self, state: ClusterState, pod: PodRequest, rows: np.ndarray
    ) -> tuple[_ShapeScores, np.ndarray]:
        """FGD's cached integer scores (and raw deltas) of `pod`'s shape, fresh on `rows`.

        The same cache and update rule as FGDAllocator.place, so slot 0 is FGD's choice.
        """
        fgd = self.fgd
        cache = fgd._scored(state, pod, rows)
        return cache, fgd._delta_store(state, pod)

    def _features(
        self,
        state: ClusterState,
        pod: PodRequest,
        nodes: np.ndarray,
        shared_gpus: np.ndarray | None,
        deltas: np.ndarray,
        scores: np.ndarray,
        whole: np.ndarray,
    ) -> np.ndarray:
        m = len(nodes)
        out = np.zeros((m, NUM_CANDIDATE_FEATURES), dtype=np.float64)
        gpu_before = state.gpu_free[nodes]
        chosen_left = np.zeros(m)
        if shared_gpus is not None:
            after = gpu_before.copy()
            after[np.arange(m), shared_gpus] -= pod.gpu_milli
            chosen_left = after[np.arange(m), shared_gpus] / MILLI_PER_GPU
        elif pod.num_gpu:
            taken = take_first_fit(gpu_before, pod.num_gpu, pod.gpu_milli)
            after = gpu_before - np.where(taken, pod.gpu_milli, 0)
        else:
            after = gpu_before
        count = state.gpu_count[nodes]
        cap = np.maximum(count * MILLI_PER_GPU, 1)
        frag_before = self.frag.get(state)[nodes]
        delta = deltas[nodes]
        free_before = gpu_before.sum(axis=1)
        free_after = after.sum(axis=1)
        cpu_after = state.cpu_free[nodes] - pod.cpu_milli
        mem_after = state.mem_free[nodes] - pod.memory_mib
        out[:, 0] = scores[nodes] / 100.0
        out[:, 1] = delta / MILLI_PER_GPU
        out[:, 2] = (delta - delta.min()) / MILLI_PER_GPU
        out[:, 6] = frag_before / cap
        out[:, 7] = free_before / MAX_SPEC_GPU_MILLI
        out[:, 8] = free_after / MAX_SPEC_GPU_MILLI
        out[:, 9] = count / 8.0
        whole_after = (after == MILLI_PER_GPU).sum(axis=1)
        out[:, 10] = whole_after / 8.0
        out[:, 11] = cpu_after / np.maximum(state.cpu_cap[nodes], 1)
        out[:, 12] = mem_after / np.maximum(state.mem_cap[nodes], 1)
        out[:, 13] = cpu_after / MAX_SPEC_CPU_MILLI
        out[:, 14] = chosen_left
        out[:, 15] = 1.0 - (0.5 * out[:, 13] + 0.5 * out[:, 8])
        out[:, 16] = (
            (free_before == state.gpu_cap[nodes].sum(axis=1))
            & (state.cpu_free[nodes] == state.cpu_cap[nodes])
        ).astype(np.float64)
        out[:, 17] = self.fgd.node_priority(state.num_nodes)[nodes] / max(state.num_nodes, 1)
        exists = state.gpu_exists[nodes]
        out[:, 19] = ((after == 0) & exists).sum(axis=1) / 8.0
        out[:, 20] = ((after > 0) & (after < 200)).sum(axis=1) / 8.0
        out[:, 21] = ((after >= 200) & (after < 500)).sum(axis=1) / 8.0
        out[:, 22] = ((after >= 500) & (after < MILLI_PER_GPU)).sum(axis=1) / 8.0
        if shared_gpus is not None:
            before = gpu_before[np.arange(m), shared_gpus]
            left = before - pod.gpu_milli
            levels = np.bincount(state.gpu_free[state.gpu_exists], minlength=MILLI_PER_GPU + 1)
            gpus = max(int(state.gpu_exists.sum()), 1)
            out[:, 18] = before / MILLI_PER_GPU
            out[:, 23] = levels[before] / gpus
            out[:, 24] = levels[left] / gpus
            out[:, 25] = ((left > 0) & (left < self._smallest_share)).astype(np.float64)
        out[:, 26:29] = _whole_gpu_holes(state, whole, nodes, whole_after)
        return np.clip(out, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)

    def _globals(
        self, state: ClusterState, pod: PodRequest, feasible: int, whole: np.ndarray
    ) -> np.ndarray:
        capacity = max(state.total_gpu_milli, 1)
        gpus = max(int(state.gpu_exists.sum()), 1)
        frag = float(self.frag.get(state).sum())
        return np.array(
            [
                pod.cpu_milli / MAX_SPEC_CPU_MILLI,
                pod.num_gpu / 8.0,
                pod.gpu_milli / MILLI_PER_GPU,
                float(pod.is_shared),
                float(pod.num_gpu == 0),
                float(bool(pod.gpu_spec)),
                float(state.gpu_free.sum()) / capacity,
                frag / capacity,
                float(whole.sum()) / gpus,
                feasible / state.num_nodes,
            ],
            dtype=np.float32,
        )


def _whole_gpu_holes(
    state: ClusterState, whole: np.ndarray, nodes: np.ndarray, whole_after: np.ndarray
) -> np.ndarray:
    """[M, 3] Sum-of-Squares over whole GPUs, at node level: how common the candidate node's
    count of fully free GPUs (`whole`, per node of the cluster) is now and at the count it is
    left with, and whether the placement breaks a node that could still host a pod of all its
    GPUs."""
    whole_before = whole[nodes]
    count = state.gpu_count[nodes]
    gpu_nodes = state.gpu_count > 0
    levels = np.bincount(whole[gpu_nodes], minlength=state.gpu_free.shape[1] + 1)
    total = max(int(gpu_nodes.sum()), 1)
    return np.stack(
        [
            levels[whole_before] / total,
            levels[whole_after] / total,
            ((count > 0) & (whole_before == count) & (whole_after < count)).astype(np.float64),
        ],
        axis=1,
    )


def _bestfit_node(
    state: ClusterState, pod: PodRequest, rows: np.ndarray, priority: np.ndarray
) -> int:
    """BestFit's node among `rows` (least CPU and GPU left; ties by the replay's node rank)."""
    cpu_left = (state.cpu_free[rows] - pod.cpu_milli) / MAX_SPEC_CPU_MILLI
    gpu_left = (state.gpu_free[rows].sum(axis=1) - pod.gpu_request_milli) / MAX_SPEC_GPU_MILLI
    score = ((1.0 - (0.5 * cpu_left + 0.5 * gpu_left)) * 100.0).astype(np.int64)
    top = rows[score == score.max()]
    return int(top[np.argmin(priority[top])])
