"""Latency of one PPO decision as served on the full 1,213-node openb cluster, measured on
every pod of a 1.3x replay of the default list, and on the scored decisions alone (past the
checkpoint's FGD gate: candidates + features + forward pass). Target: median <= 2 ms on the
2-core dev machine. Writes bench/results/ppo_decision.json.

    python bench/ppo_decision.py [--checkpoint DIR] [--seed 42] [--pods default]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from keti_ray.cluster import ClusterState
from keti_ray.fragmentation import TypicalPods
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.replay import tune_workload
from keti_ray.rl.policy import load_ppo_allocator
from keti_ray.trace import load_nodes, load_pods

TARGET_MEDIAN_MS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pods", default="default")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "ppo_decision.json")
    )
    args = parser.parse_args()
    nodes = load_nodes(default_nodes_csv())
    pods = load_pods(pod_list_csv(args.pods))
    typical = TypicalPods.from_pods(pods)
    state = ClusterState(nodes)
    workload = tune_workload(pods, state.total_gpu_milli, 1.3, args.seed)
    allocator = load_ppo_allocator(args.checkpoint, typical=typical, seed=args.seed)
    allocator.reset(args.seed)
    # As served: PPOAllocator.place on every pod of the replay (FGD's candidate unscored below
    # the checkpoint's gate, a scored decision past it); the forward pass timed inside.
    forward_ms: list[float] = []
    choose = allocator.choose

    def timed_choose(cands):
        start = time.perf_counter()
        try:
            return choose(cands)
        finally:
            forward_ms.append((time.perf_counter() - start) * 1e3)

    allocator.choose = timed_choose
    all_ms, scored_ms = [], []
    for pod in workload:
        before = allocator.decisions
        start = time.perf_counter()
        placement = allocator.place(state, pod)
        elapsed = (time.perf_counter() - start) * 1e3
        all_ms.append(elapsed)
        if allocator.decisions > before:
            scored_ms.append(elapsed)
        if placement is not None:
            state.allocate(pod, placement)
    payload = {
        "what": "one decision as served: PPOAllocator.place (candidates + features + forward "
        "pass past the FGD gate, FGD's candidate below it)",
        "checkpoint": str(args.checkpoint or "shipped"),
        "fgd_below_pct": allocator.fgd_below_pct,
        "nodes": len(nodes),
        "pods": args.pods,
        "seed": args.seed,
        "decisions": len(all_ms),
        "scored_decisions": len(scored_ms),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_1m": round(os.getloadavg()[0], 2),
        "median_ms_all_pods": round(float(np.median(all_ms)), 4),
        "p90_ms_all_pods": round(float(np.percentile(all_ms, 90)), 4),
        "median_ms_scored_decisions": round(float(np.median(scored_ms)), 4),
        "p90_ms_scored_decisions": round(float(np.percentile(scored_ms, 90)), 4),
        "median_ms_forward_pass": round(float(np.median(forward_ms)), 4),
        "target_median_ms": TARGET_MEDIAN_MS,
        "meets_target_all_pods": float(np.median(all_ms)) <= TARGET_MEDIAN_MS,
        "meets_target_scored_decisions": float(np.median(scored_ms)) <= TARGET_MEDIAN_MS,
        "unallocated_gpu_pct_end": round(state.unallocated_gpu_pct(), 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
