"""PPO vs FGD vs BestFit on every openb pod list (1.3x, seeds 42-51): the issue's table.
Pod lists the checkpoint was trained on (its manifest's `trained_on`) are marked `seen`,
the others `unseen`. Per list: means, the paired PPO - FGD difference over the seeds and its
standard error (PPO wins a list when -difference > 2 SE). Writes bench/results/ppo_eval.json.

    python bench/ppo_eval.py [--checkpoint DIR] [--seeds 42-51] [--workers 2] [--lists a,b]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from keti_ray.evaluate import parse_seeds, run_evaluation, summarise
from keti_ray.paths import default_nodes_csv, pod_list_csv, pod_list_names
from keti_ray.published import UNALLOCATED_AT_130
from keti_ray.rl.checkpoint import verify_checkpoint
from keti_ray.rl.policy import DEFAULT_CHECKPOINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seeds", default="42-51")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lists", default=None, help="comma list (default: every pod list)")
    parser.add_argument("--bestfit", action="store_true", help="also replay BestFit")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ppo_eval.json"))
    args = parser.parse_args()
    ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    manifest = verify_checkpoint(ckpt)
    trained_on = manifest.get("info", {}).get("trained_on", [])
    ppo = "ppo" if args.checkpoint is None else f"ppo:{ckpt}"
    seeds = parse_seeds(args.seeds)
    lists = args.lists.split(",") if args.lists else pod_list_names()
    out_path = Path(args.out)
    payload = json.loads(out_path.read_text()) if out_path.is_file() else {}
    payload.update(
        {
            "checkpoint_sha256": manifest["checkpoint_sha256"],
            "trained_on": trained_on,
            "seeds": seeds,
            "metric": "unallocated GPU % at 130% arrived, mean over seeds (lower is better)",
        }
    )
    rows = payload.setdefault("lists", {})
    policies = [ppo, "fgd"] + (["bestfit"] if args.bestfit else [])
    for name in lists:
        start = time.perf_counter()
        results = run_evaluation(
            default_nodes_csv(),
            pod_list_csv(name),
            policies,
            seeds,
            1.3,
            args.workers,
            explain=True,
        )
        summary = summarise(results, policies)
        row = {
            "split": "seen" if name in trained_on else "unseen",
            "ppo": summary[ppo]["unallocated_gpu_pct"]["130"],
            "fgd": summary["fgd"]["unallocated_gpu_pct"]["130"],
            "bestfit": summary["bestfit"]["unallocated_gpu_pct"]["130"] if args.bestfit else None,
            "ppo_per_seed": summary[ppo]["per_seed_130"],
            "fgd_per_seed": summary["fgd"]["per_seed_130"],
            "ppo_seconds_per_replay": summary[ppo]["seconds_per_replay"],
            "explain": {"ppo": summary[ppo]["explain"], "fgd": summary["fgd"]["explain"]},
            "seconds": round(time.perf_counter() - start, 1),
        }
        d = np.array(row["ppo_per_seed"]) - np.array(row["fgd_per_seed"])
        row["ppo_minus_fgd"] = round(float(d.mean()), 3)
        row["ppo_minus_fgd_se"] = round(float(d.std(ddof=1) / np.sqrt(d.size)), 3)
        row["ppo_over_fgd"] = round(row["ppo"] / row["fgd"], 4)
        row["ppo_wins"] = bool(-d.mean() > 2 * d.std(ddof=1) / np.sqrt(d.size))
        published = UNALLOCATED_AT_130.get(name, {})
        row["published_fgd"] = published.get("fgd")
        row["published_bestfit"] = published.get("bestfit")
        rows[name] = row
        print(
            f"{name:12s} {row['split']:6s} ppo {row['ppo']:6.3f}  fgd {row['fgd']:6.3f}  "
            f"ppo-fgd {row['ppo_minus_fgd']:+.3f} "
            f"(se {row['ppo_minus_fgd_se']:.3f})",
            flush=True,
        )
        ratios = [r["ppo_over_fgd"] for r in rows.values() if "ppo_over_fgd" in r]
        payload["mean_ppo_over_fgd"] = round(float(np.mean(ratios)), 4)
        payload["lists_won"] = sum(bool(r.get("ppo_wins")) for r in rows.values())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
