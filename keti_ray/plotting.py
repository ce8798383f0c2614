"""Figures: unallocated GPU % against arrived workload, one line per policy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(summary: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Mean unallocated-GPU curve (over seeds) of each policy, with the ideal line."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot([0, 100], [100, 0], color="grey", linestyle=":", label="ideal")
    for name, row in summary.items():
        curve = row["curve_mean"]
        xs = [i for i, v in enumerate(curve) if v is not None]
        ax.plot(xs, [curve[i] for i in xs], label=name)
    ax.set_xlim(70, 130)
    ax.set_ylim(0, 35)
    ax.set_xlabel("arrived workload (% of cluster GPU capacity)")
    ax.set_ylabel("unallocated GPU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
