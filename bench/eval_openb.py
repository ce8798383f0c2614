"""Reproduce the FGD paper's table on every openb pod list; write bench/results/eval_openb.json
and a markdown table (bench/results/eval_openb.md) with our figure and the published one.

    python bench/eval_openb.py [--lists default,gpushare40] [--seeds 42-51] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from keti_ray.evaluate import parse_seeds, run_evaluation, summarise
from keti_ray.paths import default_nodes_csv, pod_list_csv, pod_list_names
from keti_ray.published import POLICIES, UNALLOCATED_AT_130

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lists", default=",".join(pod_list_names()))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    policies = args.policies.split(",")
    out: dict[str, dict] = {}
    started = time.perf_counter()
    for name in args.lists.split(","):
        t0 = time.perf_counter()
        results = run_evaluation(
            default_nodes_csv(), pod_list_csv(name), policies, seeds, 1.3, args.workers
        )
        summary = summarise(results, policies)
        out[name] = {
            policy: {
                "unallocated_130": row["unallocated_gpu_pct"]["130"],
                "unallocated_100": row["unallocated_gpu_pct"]["100"],
                "std_130": row["unallocated_gpu_pct_std"]["130"],
                "published_130": UNALLOCATED_AT_130.get(name, {}).get(policy),
                "frag_pct_130": row["frag_pct_130"],
                "seconds_per_replay": row["seconds_per_replay"],
            }
            for policy, row in summary.items()
        }
        line = "  ".join(
            f"{p}={out[name][p]['unallocated_130']:.2f}({out[name][p]['published_130']})"
            for p in policies
        )
        print(f"{name:11s} {time.perf_counter() - t0:6.1f}s  {line}", flush=True)
    payload = {
        "seeds": seeds,
        "tune": 1.3,
        "results": out,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval_openb.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / "eval_openb.md").write_text(markdown(out, policies))
    print(markdown(out, policies))


def markdown(out: dict[str, dict], policies: list[str]) -> str:
    """Our mean unallocated GPU % at 130% arrived, with the published figure in brackets."""
    head = "| pod list | " + " | ".join(policies) + " | max abs diff |\n"
    head += "|---" * (len(policies) + 2) + "|\n"
    rows = []
    for name, per in out.items():
        cells, diffs = [], []
        for p in policies:
            ours, pub = per[p]["unallocated_130"], per[p]["published_130"]
            cells.append(f"{ours:.2f} ({pub:.2f})" if pub is not None else f"{ours:.2f}")
            if pub is not None:
                diffs.append(abs(ours - pub))
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {max(diffs):.2f} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
