"""Replay several policies over several seeds (optionally in worker processes) and summarise.

This is what `keti-ray eval` runs; the summary is the FGD paper's table (mean and spread of
unallocated GPU % at 100-130% arrived), plus FGD fragmentation and seconds per replay.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keti_ray.cluster import ClusterState
from keti_ray.fragmentation import TypicalPods
from keti_ray.replay import ReplayResult, replay, tune_workload
from keti_ray.trace import load_nodes, load_pods

REPORT_POINTS = (100, 110, 120, 130)

PolicyFactory = Callable[[str, TypicalPods, int], object]


@dataclass(frozen=True)
class EvalJob:
    nodes_csv: str
    pods_csv: str
    policy: str
    seed: int
    tune: float
    explain: bool = False


SLIVER_BUCKETS = ((1, 99), (100, 199), (200, 499), (500, 999))


class _Recorder:
    """Wraps an allocator: remembers the state it placed into and the pods that fit nowhere."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.skipped: list = []
        self.state: ClusterState | None = None

    def reset(self, seed: int | None = None) -> None:
        self.inner.reset(seed)

    def place(self, state: ClusterState, pod):
        self.state = state
        choice = self.inner.place(state, pod)
        if choice is None:
            self.skipped.append(pod)
        return choice


def explain_state(state: ClusterState, skipped: Sequence) -> dict:
    """What is left unallocated at the end, as % of GPU capacity: partial-GPU slivers by free
    milli, whole GPUs left free (and whether their node's CPU is gone), skipped demand by shape.
    """
    cap = max(state.total_gpu_milli, 1)
    free = state.gpu_free[state.gpu_exists]
    out: dict = {"unallocated_pct": round(100.0 * float(free.sum()) / cap, 3), "slivers": {}}
    for lo, hi in SLIVER_BUCKETS:
        sel = (free >= lo) & (free <= hi)
        out["slivers"][f"{lo}-{hi}"] = {
            "gpus": int(sel.sum()),
            "pct": round(100.0 * float(free[sel].sum()) / cap, 3),
        }
    whole = state.gpu_free == 1000
    per_node = whole.sum(axis=1)
    cpu_gone = state.cpu_free < 1000  # under one CPU left: hardly any pod can use the GPU
    out["whole_free_gpus"] = {
        "gpus": int(per_node.sum()),
        "pct": round(100.0 * 1000 * float(per_node.sum()) / cap, 3),
        "stranded_by_cpu_gpus": int(per_node[cpu_gone].sum()),
        "stranded_by_cpu_pct": round(100.0 * 1000 * float(per_node[cpu_gone].sum()) / cap, 3),
    }
    by_shape: dict[str, list] = {}
    for pod in skipped:
        key = f"{pod.num_gpu}x{pod.gpu_milli}" if pod.num_gpu else "cpu-only"
        entry = by_shape.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += pod.gpu_request_milli
    out["skipped_by_shape"] = {
        k: {"pods": v[0], "pct_of_capacity": round(100.0 * v[1] / cap, 3)}
        for k, v in sorted(by_shape.items(), key=lambda kv: -kv[1][1])
    }
    return out


def parse_seeds(text: str) -> list[int]:
    """`42-51`, `42,43,50` or a mix (`42-44,50`) -> a sorted list of distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise ValueError(
                f"--seeds: {part!r} is not a seed; use N, N-M (M >= N) or a comma list"
            ) from None
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. 42-51")
    return sorted(seeds)


def make_policy(name: str, typical: TypicalPods, seed: int):
    """An allocator by policy name: the heuristics, or `ppo` / `ppo:PATH` once available."""
    from keti_ray.allocators import make_allocator

    if name == "ppo" or name.startswith("ppo:"):
        from keti_ray.rl.policy import load_ppo_allocator  # imported lazily: pulls torch

        path = name.split(":", 1)[1] if ":" in name else None
        return load_ppo_allocator(path, typical=typical, seed=seed)
    return make_allocator(name, typical, seed)


@functools.lru_cache(maxsize=4)
def load_inputs(nodes_csv: str, pods_csv: str) -> tuple[list, list, TypicalPods, int]:
    """Nodes, pods, FGD's typical pods and GPU capacity, read once per process and pair of
    files (every replay of an evaluation shares them; nothing here is mutated)."""
    nodes = load_nodes(nodes_csv)
    pods = load_pods(pods_csv)
    return nodes, pods, TypicalPods.from_pods(pods), ClusterState(nodes).total_gpu_milli


def run_job(job: EvalJob) -> ReplayResult:
    """One replay (a process-pool entry point: loads, or reuses, its inputs itself)."""
    nodes, pods, typical, capacity = load_inputs(job.nodes_csv, job.pods_csv)
    workload = tune_workload(pods, capacity, job.tune, job.seed)
    allocator = make_policy(job.policy, typical, job.seed)
    recorder = _Recorder(allocator) if job.explain else None
    result = replay(nodes, workload, recorder or allocator, job.seed, typical)
    result.policy = job.policy
    if recorder is not None and recorder.state is not None:
        result.extra["explain"] = explain_state(recorder.state, recorder.skipped)
    return result


def run_evaluation(
    nodes_csv: str | Path,
    pods_csv: str | Path,
    policies: Sequence[str],
    seeds: Sequence[int],
    tune: float = 1.3,
    workers: int = 1,
    on_result: Callable[[ReplayResult], None] | None = None,
    explain: bool = False,
) -> list[ReplayResult]:
    """Every (policy, seed) replay; inputs are validated once up front, before any work."""
    load_inputs(str(nodes_csv), str(pods_csv))
    jobs = [
        EvalJob(str(nodes_csv), str(pods_csv), p, s, tune, explain) for p in policies for s in seeds
    ]
    results: list[ReplayResult] = []
    if workers <= 1:
        for job in jobs:
            result = run_job(job)
            results.append(result)
            if on_result:
                on_result(result)
        return results
    workers = min(workers, len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if on_result:
                on_result(result)
    order = {(j.policy, j.seed): i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(r.policy, r.seed)])
    return results


def summarise(results: Sequence[ReplayResult], policies: Sequence[str]) -> dict[str, dict]:
    """Per policy: mean/std of unallocated GPU % at the report points, per-seed at 130%, etc."""
    out: dict[str, dict] = {}
    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
    for policy in policies:
        rows = [r for r in results if r.policy == policy]
        if not rows:
            continue
        curves = np.array([r.unallocated_gpu_pct for r in rows])
        out[policy] = {
            "unallocated_gpu_pct": {
                str(p): round(float(np.nanmean(curves[:, p])), 3) for p in REPORT_POINTS
            },
            "unallocated_gpu_pct_std": {
                str(p): round(float(np.nanstd(curves[:, p])), 3) for p in REPORT_POINTS
            },
            "per_seed_130": [round(float(r.at(130)), 3) for r in rows],
            "frag_pct_130": round(float(np.mean([r.frag_pct for r in rows])), 3),
            "seconds_per_replay": round(float(np.mean([r.seconds for r in rows])), 3),
            "pods_offered": int(np.mean([r.pods_offered for r in rows])),
            "pods_placed_mean": round(float(np.mean([r.pods_placed for r in rows])), 1),
            "explain": _mean_explain([r.extra["explain"] for r in rows if "explain" in r.extra]),
            "curve_mean": [
                None if np.isnan(v) else round(float(v), 3) for v in np.nanmean(curves, axis=0)
            ],
        }
    return out


def _mean_explain(items: list[dict]) -> dict | None:
    """The per-seed decompositions averaged field by field (None when none was asked for)."""
    if not items:
        return None

    def mean(values):
        dicts = [v for v in values if isinstance(v, dict)]
        if dicts:  # a key missing in one seed (a shape never skipped there) counts as zero
            keys = sorted({k for v in dicts for k in v})
            return {
                k: mean([v.get(k) if isinstance(v, dict) else None for v in values]) for k in keys
            }
        return round(float(np.mean([0 if v is None else v for v in values])), 3)

    return mean(items)
