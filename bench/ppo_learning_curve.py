"""Learning curve of a `keti-ray train` run (its report.json) as a PNG, plus a JSON summary:
behaviour cloning (loss and accuracy against the teacher's labels per epoch), PPO (episode
return per iteration) and the evaluations against FGD (unallocated GPU % at 130%).

    python bench/ppo_learning_curve.py RUN/report.json [--png bench/results/ppo_train_curve.png]

(The shipped policy's learning curve, bench/results/ppo_learning_curve.png, is the policy
search's: bench/ppo_search_curve.py.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report")
    parser.add_argument("--png", default=str(RESULTS / "ppo_train_curve.png"))
    parser.add_argument("--json", default=str(RESULTS / "ppo_train_distill.json"))
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text())
    history = (report.get("bc") or {}).get("history", [])
    iterations = report.get("iterations", [])
    evaluations = report.get("evaluations", [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if history:
        ax = axes[0]
        ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], label="loss")
        ax2 = ax.twinx()
        ax2.plot(
            [h["epoch"] for h in history],
            [h["accuracy"] for h in history],
            color="tab:orange",
            label="accuracy",
        )
        ax.set_title("behaviour cloning of the teacher")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy")
        ax2.set_ylabel("accuracy (argmax = label)")
    if iterations:
        axes[1].plot(
            [it["iteration"] for it in iterations],
            [it["episode_return_mean"] for it in iterations],
            marker="o",
        )
        axes[1].set_title("PPO fine-tuning")
        axes[1].set_xlabel("iteration")
        axes[1].set_ylabel("episode return (mean)")
    if evaluations:
        x = [e["iteration"] for e in evaluations]
        axes[2].plot(x, [e["ppo_unallocated_pct"] for e in evaluations], marker="o", label="PPO")
        axes[2].plot(x, [e["fgd_unallocated_pct"] for e in evaluations], marker="s", label="FGD")
        axes[2].set_title("evaluation (training seeds, default list)")
        axes[2].set_xlabel("PPO iteration (0 = after behaviour cloning)")
        axes[2].set_ylabel("unallocated GPU % at 130%")
        axes[2].legend()
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100)
    summary = {k: report.get(k) for k in ("wall_seconds", "checkpoint_sha256", "status")}
    summary.update(
        {
            "teacher": report.get("teacher"),
            "bc": report.get("bc"),
            "iterations": iterations,
            "evaluations": [
                {k: v for k, v in e.items() if k != "rows"} | {"rows": e.get("rows")}
                for e in evaluations
            ],
            "config": report.get("config"),
        }
    )
    Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.png} and {args.json}")


if __name__ == "__main__":
    main()
