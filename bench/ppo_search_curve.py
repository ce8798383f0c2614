"""The learning curve of the shipped policy: every CMA-ES generation of the searches it came
from (each continued the one before), as the paired difference to FGD on that generation's
new design seeds. Reads bench/results/ppo_search_stage<N>.json in stage order (a search the
rule rejected, `ppo_search_stage<N>_rejected.json`, is not on the shipped policy's path),
writes bench/results/ppo_learning_curve.png.

    python bench/ppo_search_curve.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STAGE_REPORT = re.compile(r"ppo_search_stage(\d+)\.json")


def stage_reports() -> list[Path]:
    """The shipped lineage's reports, stage 1 first (by number: stage 10 comes after 9)."""
    numbered = {}
    for path in RESULTS.glob("ppo_search_stage*.json"):
        match = STAGE_REPORT.fullmatch(path.name)
        if match:
            numbered[int(match[1])] = path
    return [numbered[n] for n in sorted(numbered)]


def main() -> None:
    stages = stage_reports()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.axhline(0.0, color="grey", linestyle=":", label="FGD")
    offset = 0
    for i, path in enumerate(stages, 1):
        report = json.loads(path.read_text())
        curve = report["curve"]
        gens = [offset + r["generation"] for r in curve]
        ax.plot(
            gens,
            [r["mean_policy_minus_fgd"] for r in curve],
            marker="o",
            color="C0",
            label="CMA-ES mean" if i == 1 else None,
        )
        ax.plot(
            gens,
            [r["population_minus_fgd"] for r in curve],
            color="C1",
            alpha=0.6,
            label="population mean" if i == 1 else None,
        )
        v = report["validation"]
        ax.errorbar(
            [gens[-1] + 0.5],
            [v["mean"]],
            yerr=[2 * v["se"]],
            fmt="s",
            color="C2",
            capsize=3,
            label="validation (held-out design seeds), 2 SE" if i == 1 else None,
        )
        offset = gens[-1] + 1
        if i < len(stages):
            ax.axvline(offset - 0.5, color="grey", alpha=0.3)
    ax.set_xlabel(
        f"generation ({len(stages)} searches, each continuing the last)\n"
        "stage 4 on: one weight vector per pod class; stage 7 on: whole-GPU hole features"
    )
    ax.set_ylabel("unallocated GPU % at 130% minus FGD (pp)")
    ax.set_title("Policy search on 5 training lists, full 1,213-node cluster")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = RESULTS / "ppo_learning_curve.png"
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
