"""Seconds per replay of the default openb trace (1.3x, ~10.8k pods, 1,213 nodes) for every
policy, in one process. Target: FGD <= 20 s on the 2-core dev machine.
Writes bench/results/replay.json.

    python bench/replay.py [--seeds 42-44] [--pods default]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from keti_ray.allocators import HEURISTICS, make_allocator
from keti_ray.cluster import ClusterState
from keti_ray.evaluate import parse_seeds
from keti_ray.fragmentation import TypicalPods
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.replay import replay, tune_workload
from keti_ray.trace import load_nodes, load_pods

TARGET_FGD_SECONDS = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="42-44")
    parser.add_argument("--pods", default="default")
    parser.add_argument("--policies", default=",".join(HEURISTICS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "replay.json"))
    args = parser.parse_args()
    nodes = load_nodes(default_nodes_csv())
    pods = load_pods(pod_list_csv(args.pods))
    typical = TypicalPods.from_pods(pods)
    capacity = ClusterState(nodes).total_gpu_milli
    results = {}
    for policy in args.policies.split(","):
        seconds, offered = [], []
        for seed in parse_seeds(args.seeds):
            workload = tune_workload(pods, capacity, 1.3, seed)
            start = time.perf_counter()
            replay(nodes, workload, make_allocator(policy, typical, seed), seed, typical)
            seconds.append(time.perf_counter() - start)
            offered.append(len(workload))
        results[policy] = {
            "seconds_per_replay_median": round(statistics.median(seconds), 3),
            "seconds_per_replay_max": round(max(seconds), 3),
            "pods_per_replay": int(statistics.mean(offered)),
        }
        print(f"{policy:11s} {statistics.median(seconds):7.2f} s/replay (max {max(seconds):.2f})")
    fgd = results.get("fgd", {}).get("seconds_per_replay_median")
    base = results.get("random", {}).get("seconds_per_replay_median")
    payload = {
        "pods": args.pods,
        "nodes": len(nodes),
        "seeds": parse_seeds(args.seeds),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "target_fgd_seconds": TARGET_FGD_SECONDS,
        "fgd_meets_target": fgd is not None and fgd <= TARGET_FGD_SECONDS,
        "fgd_over_random": round(fgd / base, 2) if fgd and base else None,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps({k: payload[k] for k in ("fgd_meets_target", "fgd_over_random")}))


if __name__ == "__main__":
    main()
