"""`keti-ray report`: figures and a short summary from the telemetry store."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keti_ray.telemetry import TelemetryStore  # noqa: E402


def write_report(store: TelemetryStore, out_dir: str | Path) -> dict:
    """Write the PNGs into `out_dir` and return the summary (also written as summary.txt)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = store.read("events").to_pylist()
    samples = store.read("samples").to_pylist()
    events.sort(key=lambda r: r["time"])
    t0 = min([r["time"] for r in events + samples], default=0.0)
    files = []

    def figure(name: str, title: str, ylabel: str):
        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        files.append(out / name)
        return fig, ax

    def save(fig) -> None:
        fig.tight_layout()
        fig.savefig(files[-1])
        plt.close(fig)

    xs = [(r["time"] - t0) / 60 for r in events if r["unallocated_gpu_pct"] is not None]
    fig, ax = figure("unallocated_gpu.png", "Unallocated GPU over time", "% of GPU capacity")
    ax.plot(xs, [r["unallocated_gpu_pct"] for r in events if r["unallocated_gpu_pct"] is not None])
    ax.set_xlabel("minutes")
    save(fig)

    frag = [(r["time"], r["frag_pct"]) for r in events if r["frag_pct"] is not None]
    fig, ax = figure("fragmentation.png", "FGD fragmentation", "% of GPU capacity")
    ax.plot([(t - t0) / 60 for t, _ in frag], [f for _, f in frag], marker=".")
    ax.set_xlabel("minutes")
    save(fig)

    latency = np.array([r["decision_ms"] for r in events if r["decision_ms"] is not None])
    fig, ax = figure("decision_latency.png", "Decision latency", "decisions")
    if latency.size:
        ax.hist(latency, bins=40)
    ax.set_xlabel("ms")
    save(fig)

    occupancy: dict[str, list[tuple[float, float]]] = {}
    per_time: dict[tuple[str, float], float] = {}
    for r in samples:
        if r["sm_pct_granted"] is not None:
            key = (r["gpu_uuid"], round(r["time"]))
            per_time[key] = per_time.get(key, 0.0) + r["sm_pct_granted"]
    for (gpu, t), pct in sorted(per_time.items(), key=lambda kv: kv[0][1]):
        occupancy.setdefault(gpu, []).append(((t - t0) / 60, pct))
    fig, ax = figure("sm_occupancy.png", "SM partition occupancy per GPU", "% of SMs granted")
    for gpu, points in sorted(occupancy.items())[:16]:
        ax.plot([p[0] for p in points], [p[1] for p in points], label=gpu[-8:])
    if occupancy:
        ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("minutes")
    save(fig)

    allocs = [r for r in events if r["op"] == "allocate"]
    summary = {
        "events": len(events),
        "allocations": len(allocs),
        "releases": len(events) - len(allocs),
        "samples": len(samples),
        "gpus_sampled": len(occupancy),
        "policies": sorted({r["policy"] for r in allocs if r["policy"]}),
        "unallocated_gpu_pct_last": events[-1]["unallocated_gpu_pct"] if events else None,
        "frag_pct_last": frag[-1][1] if frag else None,
        "decision_ms_p50": round(float(np.percentile(latency, 50)), 3) if latency.size else None,
        "decision_ms_p99": round(float(np.percentile(latency, 99)), 3) if latency.size else None,
        "figures": [str(f) for f in files],
    }
    lines = [f"{k}: {v}" for k, v in summary.items() if k != "figures"]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    return summary
