"""Headroom study: how much less GPU could any placement leave unallocated than FGD?

Policies replayed on the same tuned workloads (the FGD paper's protocol, 130% arrived):
  fgd          the baseline;
  clairvoyant  FGD's top candidates judged by FGD rollouts over the REAL next pods (it knows
               the future, still places every pod that fits, in arrival order): an estimate
               of what an online policy could gain, not a bound;
  teacher      the same rollouts over futures drawn from the pod list's shape distribution
               (the typical-pod mix): sees no future.
Each replay also records what is left at the end (slivers by free milli, whole free GPUs,
skipped demand by shape). Jobs run in worker processes (no Ray, numpy only).

    python bench/headroom.py --lists default,gpushare40 --seeds 1000-1002 \\
        --policies fgd,clairvoyant,teacher --workers 16 --out bench/results/headroom.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from keti_ray.allocators import make_allocator
from keti_ray.allocators.rollout import RolloutAllocator, real_future, sampled_future
from keti_ray.evaluate import _Recorder, explain_state, load_inputs, parse_seeds
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.replay import replay, tune_workload


def run(job: dict) -> dict:
    nodes, pods, typical, capacity = load_inputs(
        str(default_nodes_csv()), str(pod_list_csv(job["list"]))
    )
    seed = job["seed"]
    workload = tune_workload(pods, capacity, 1.3, seed)
    kind = job["policy"]
    if kind == "fgd":
        inner = make_allocator("fgd", typical, seed)
    else:
        future = (
            real_future(workload, job["horizon"])
            if kind == "clairvoyant"
            else sampled_future(pods, job["horizon"], job["samples"], seed + 7)
        )
        inner = RolloutAllocator(
            typical, future, seed, job["top"], job["start"], job["frag_weight"]
        )
    rec = _Recorder(inner)
    started = time.perf_counter()
    result = replay(nodes, workload, rec, seed, typical)
    out = {
        **job,
        "unallocated_130": round(result.at(130), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "explain": explain_state(rec.state, rec.skipped),
    }
    if kind != "fgd":
        out["decisions"] = inner.decisions
        out["changed_vs_fgd"] = inner.changed
    return out


def summarise(rows: list[dict]) -> dict:
    table: dict = {}
    for name in sorted({r["list"] for r in rows}):
        base = {
            r["seed"]: r["unallocated_130"]
            for r in rows
            if r["list"] == name and r["policy"] == "fgd"
        }
        entry: dict = {}
        for policy in sorted({r["policy"] for r in rows if r["list"] == name}):
            vals = {
                r["seed"]: r["unallocated_130"]
                for r in rows
                if r["list"] == name and r["policy"] == policy
            }
            seeds = sorted(set(vals) & set(base))
            d = np.array([vals[s] - base[s] for s in seeds])
            entry[policy] = {
                "mean": round(float(np.mean(list(vals.values()))), 3),
                "seeds": sorted(vals),
                "minus_fgd": round(float(d.mean()), 3) if d.size else None,
                "minus_fgd_se": round(float(d.std(ddof=1) / np.sqrt(d.size)), 3)
                if d.size > 1
                else None,
            }
        table[name] = entry
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lists", default="default")
    parser.add_argument("--seeds", default="1000-1002")
    parser.add_argument("--policies", default="fgd,clairvoyant,teacher")
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--start", type=float, default=70.0)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--frag-weight", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=0, help="stop submitting after this")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "headroom.json"))
    args = parser.parse_args()
    jobs = [
        {
            "list": name,
            "seed": seed,
            "policy": policy,
            "horizon": args.horizon,
            "top": args.top,
            "start": args.start,
            "samples": args.samples,
            "frag_weight": args.frag_weight,
        }
        for policy in args.policies.split(",")
        for name in args.lists.split(",")
        for seed in parse_seeds(args.seeds)
    ]
    started = time.time()
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        payload = {
            "metric": "unallocated GPU % at 130% arrived",
            "settings": vars(args),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "wall_seconds": round(time.time() - started, 1),
            "summary": summarise(rows),
            "rows": rows,
        }
        out.write_text(json.dumps(payload, indent=1) + "\n")

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            print(
                f"{row['list']} seed {row['seed']} {row['policy']}: {row['unallocated_130']:.3f}% "
                f"({row['seconds']} s, changed {row.get('changed_vs_fgd', '-')})",
                flush=True,
            )
            write()
    write()
    print(json.dumps(summarise(rows), indent=1))


if __name__ == "__main__":
    main()
