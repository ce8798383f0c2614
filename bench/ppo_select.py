"""Pick a checkpoint on design seeds only, never on the evaluation seeds 42-51.

Each candidate checkpoint and FGD replay the training pod lists with design seeds (default
1000-1004); the candidate with the lowest mean paired difference to FGD wins. Writes
bench/results/ppo_select.json; then evaluate the winner with bench/ppo_eval.py.

    python bench/ppo_select.py CKPT [CKPT ...] [--lists a,b] [--seeds 1000-1004] [--workers 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from keti_ray.evaluate import parse_seeds, run_evaluation, summarise
from keti_ray.paths import default_nodes_csv, pod_list_csv

TRAINING_LISTS = "default,gpushare40,gpuspec25,multigpu20,cpu200"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--lists", default=TRAINING_LISTS)
    parser.add_argument("--seeds", default="1000-1004")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ppo_select.json"))
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    if set(seeds) & set(range(42, 52)):
        raise SystemExit("--seeds: 42-51 are evaluation seeds; select on other seeds")
    policies = [f"ppo:{c}" for c in args.checkpoints] + ["fgd"]
    table: dict = {}
    for name in args.lists.split(","):
        results = run_evaluation(
            default_nodes_csv(), pod_list_csv(name), policies, seeds, 1.3, args.workers
        )
        summary = summarise(results, policies)
        fgd = np.array(summary["fgd"]["per_seed_130"])
        table[name] = {
            p: {
                "mean": summary[p]["unallocated_gpu_pct"]["130"],
                "minus_fgd": round(float((np.array(summary[p]["per_seed_130"]) - fgd).mean()), 4),
            }
            for p in policies
        }
        print(name, json.dumps(table[name]), flush=True)
    scores = {p: float(np.mean([table[n][p]["minus_fgd"] for n in table])) for p in policies[:-1]}
    best = min(scores, key=scores.get)
    payload = {"seeds": seeds, "lists": table, "mean_minus_fgd": scores, "chosen": best}
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print("chosen", best, scores[best])


if __name__ == "__main__":
    main()
