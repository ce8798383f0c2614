"""The teacher the learned allocator is distilled from: FGD rollouts over sampled futures.

An episode replays a tuned, shuffled pod list on the full cluster (the replay protocol). At
each pod the candidate set is the one the policy sees (`CandidateGenerator`, FGD's choice in
slot 0). Once the cluster is `start_pct` allocated, the teacher takes the `top` candidates
with the best FGD scores whose nodes differ (node signature), replays FGD over `horizon` pods
drawn from the pod list (the workload's shape distribution: no future is seen) after each,
and picks the one with the most GPU allocated minus FGD fragmentation at the end (ties: FGD's
choice). Its choices are applied, so the states are the teacher's own. Every decision is
recorded (features, mask, the teacher's slot) for behaviour cloning; earlier decisions, where
the teacher is FGD, are kept with probability `early_keep`.

No Ray and no gymnasium: this runs in plain worker processes (multiprocessing).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from keti_ray.allocators.fgd import FGDAllocator
from keti_ray.allocators.rollout import clone_fgd, node_signature, real_future, sampled_future
from keti_ray.cluster import ClusterState, Placement, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.replay import tune_workload
from keti_ray.rl.candidates import CandidateGenerator, CandidateSet


@dataclass(frozen=True)
class TeacherSettings:
    horizon: int = 100
    top: int = 3
    start_pct: float = 80.0
    frag_weight: float = 1.0
    samples: int = 1
    early_keep: float = 0.1
    # "sampled": futures drawn from the pod list (sees no future); "real": the next pods of
    # the replay itself (a privileged, clairvoyant teacher: allowed for labelling training
    # episodes, since the student never sees the future; never used to decide when serving).
    future: str = "sampled"


def rollout_value(
    gen: CandidateGenerator,
    state: ClusterState,
    pod: PodRequest,
    placement: Placement,
    future: list[PodRequest],
    frag_weight: float,
) -> float:
    """GPU allocated after FGD places `future` behind this placement, minus weighted frag."""
    trial = state.copy()
    trial.allocate(pod, placement)
    fgd = clone_fgd(gen.fgd, trial, FGDAllocator)
    for other in future:
        choice = fgd.place(trial, other)
        if choice is not None:
            trial.allocate(other, choice)
    value = float(trial.gpu_allocated_milli())
    if frag_weight:
        value -= frag_weight * float(fgd.node_fragmentation(trial).sum())
    return value


def teacher_slot(
    gen: CandidateGenerator,
    state: ClusterState,
    pod: PodRequest,
    cands: CandidateSet,
    futures: list[list[PodRequest]],
    settings: TeacherSettings,
) -> int:
    """The slot the teacher picks among the best-scored distinct candidates (0 on ties)."""
    scores = cands.features[: cands.size, 0]
    order = sorted(range(cands.size), key=lambda i: (i != cands.fgd_index, -scores[i], i))
    picked: list[int] = []
    seen: set = set()
    for i in order:
        sig = node_signature(state, int(cands.nodes[i]))
        if cands.shared_gpus is not None:
            sig = (*sig, int(state.gpu_free[cands.nodes[i], cands.shared_gpus[i]]))
        if sig in seen:
            continue
        seen.add(sig)
        picked.append(i)
        if len(picked) >= settings.top:
            break
    if len(picked) < 2:
        return cands.fgd_index
    values = np.zeros(len(picked))
    for future in futures:
        for j, i in enumerate(picked):
            values[j] += rollout_value(
                gen, state, pod, cands.placement(i), future, settings.frag_weight
            )
    return picked[int(np.argmax(values))]


def label_episode(
    nodes,
    pods: list[PodRequest],
    typical: TypicalPods,
    seed: int,
    k: int,
    random_extra: int,
    settings: TeacherSettings,
    tune: float = 1.3,
) -> dict[str, Any]:
    """One teacher replay: recorded decisions and the replay's final unallocated GPU %."""
    state = ClusterState(nodes)
    workload = tune_workload(pods, state.total_gpu_milli, tune, seed)
    gen = CandidateGenerator(typical, k, random_extra, seed)
    if settings.future == "real":
        future = real_future(workload, settings.horizon)
    elif settings.future == "sampled":
        future = sampled_future(pods, settings.horizon, settings.samples, seed + 7)
    else:
        raise ValueError(f"teacher.future must be 'sampled' or 'real', got {settings.future!r}")
    keep = np.random.default_rng(seed + 11)
    rec: dict[str, list] = {"cands": [], "glob": [], "mask": [], "action": [], "late": []}
    changed = decisions = 0
    started = time.perf_counter()
    for pod in workload:
        early = 100.0 - state.unallocated_gpu_pct() < settings.start_pct or not pod.num_gpu
        if early and settings.early_keep == 0:  # FGD's choice, without building features
            choice = gen.fgd.place(state, pod)
            if choice is not None:
                state.allocate(pod, choice)
            continue
        cands = gen.candidates(state, pod)
        if cands is None:
            continue
        slot = cands.fgd_index
        if cands.size >= 2:
            late = 100.0 - state.unallocated_gpu_pct() >= settings.start_pct and pod.num_gpu
            if late:
                slot = teacher_slot(gen, state, pod, cands, future(state, pod), settings)
                decisions += 1
                changed += int(slot != cands.fgd_index)
            if late or keep.random() < settings.early_keep:
                rec["cands"].append(cands.features.copy())
                rec["glob"].append(cands.globals.copy())
                rec["mask"].append(cands.mask.copy())
                rec["action"].append(slot)
                rec["late"].append(bool(late))
        state.allocate(pod, cands.placement(slot))
    return {
        "cands": np.asarray(rec["cands"], dtype=np.float32),
        "glob": np.asarray(rec["glob"], dtype=np.float32),
        "mask": np.asarray(rec["mask"], dtype=np.float32),
        "action": np.asarray(rec["action"], dtype=np.int64),
        "late": np.asarray(rec["late"], dtype=bool),
        "final_unallocated_pct": state.unallocated_gpu_pct(),
        "teacher_decisions": decisions,
        "changed_vs_fgd": changed,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _job(args: tuple) -> dict[str, Any]:
    nodes_csv, pods_name, seed, k, random_extra, settings, tune, cache_dir = args
    import json
    from pathlib import Path

    from keti_ray.paths import pod_list_csv
    from keti_ray.trace import load_nodes, load_pods

    cached = None
    if cache_dir is not None:  # one file per episode, so an interrupted run resumes
        tag = f"{Path(pods_name).stem}-{seed}-{abs(hash((k, random_extra, settings, tune)))}"
        cached = Path(cache_dir) / f"episode-{tag}"
        if cached.with_suffix(".json").is_file():
            meta = json.loads(cached.with_suffix(".json").read_text())
            return {**meta, **dict(np.load(cached.with_suffix(".npz")))}
    pods = load_pods(pod_list_csv(pods_name))
    out = label_episode(
        load_nodes(nodes_csv),
        pods,
        TypicalPods.from_pods(pods),
        seed,
        k,
        random_extra,
        settings,
        tune,
    )
    out["pods"], out["seed"] = pods_name, seed
    if cached is not None:
        arrays = {key: out[key] for key in ("cands", "glob", "mask", "action", "late")}
        np.savez_compressed(cached.with_suffix(".npz"), **arrays)
        meta = {key: v for key, v in out.items() if key not in arrays}
        cached.with_suffix(".json").write_text(json.dumps(meta))
    return out


def collect_teacher(
    nodes_csv: str,
    pod_lists: list[str],
    seeds: list[int],
    k: int,
    random_extra: int,
    settings: TeacherSettings,
    workers: int = 2,
    tune: float = 1.3,
    cache_dir: str | None = None,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Teacher episodes for every (pod list, seed), in `workers` processes; stacked arrays
    (in a fixed order, so the result does not depend on which worker finished first)."""
    jobs = [
        (nodes_csv, p, s, k, random_extra, settings, tune, cache_dir)
        for p in pod_lists
        for s in seeds
    ]
    if workers <= 1:
        results = [_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_job, jobs))
    keys = ("cands", "glob", "mask", "action", "late")
    stacked = {key: np.concatenate([r[key] for r in results]) for key in keys}
    summary = [
        {
            k2: r[k2]
            for k2 in (
                "pods",
                "seed",
                "final_unallocated_pct",
                "teacher_decisions",
                "changed_vs_fgd",
                "seconds",
            )
        }
        for r in results
    ]
    return stacked, summary
