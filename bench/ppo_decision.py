"""Latency of one PPO decision (candidates + features + forward pass) on the full 1,213-node
openb cluster, measured on every pod of a 1.3x replay of the default list.
Target: median <= 2 ms on the 2-core dev machine. Writes bench/results/ppo_decision.json.

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
    all_ms, choice_ms, forward_ms = [], [], []
    for pod in workload:
        start = time.perf_counter()
        cands = allocator.gen.candidates(state, pod)
        mid = time.perf_counter()
        idx = allocator.choose(cands) if cands is not None else None
        end = time.perf_counter()
        all_ms.append((end - start) * 1e3)
        if cands is not None and cands.size > 1:
            choice_ms.append((end - start) * 1e3)
            forward_ms.append((end - mid) * 1e3)
        if idx is not None:
            state.allocate(pod, cands.placement(idx))
    payload = {
        "what": "one decision = candidate generation + features + forward pass",
        "nodes": len(nodes),
        "pods": args.pods,
        "seed": args.seed,
        "decisions": len(all_ms),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_1m": round(os.getloadavg()[0], 2),
        "median_ms_all_pods": round(float(np.median(all_ms)), 4),
        "p90_ms_all_pods": round(float(np.percentile(all_ms, 90)), 4),
        "median_ms_pods_with_a_choice": round(float(np.median(choice_ms)), 4),
        "p90_ms_pods_with_a_choice": round(float(np.percentile(choice_ms, 90)), 4),
        "median_ms_forward_pass": round(float(np.median(forward_ms)), 4),
        "target_median_ms": TARGET_MEDIAN_MS,
        "meets_target": float(np.median(choice_ms)) <= TARGET_MEDIAN_MS,
        "unallocated_gpu_pct_end": round(state.unallocated_gpu_pct(), 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
