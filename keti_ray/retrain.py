"""Online retraining: calibrate from telemetry, warm-start PPO from the serving checkpoint,
train on the live mix and node list, and promote the candidate only if it beats the serving
policy on paired held-out replays of that mix.

Steps (each leaves a file in the output folder, so a failed run says where it stopped):
  1. mix.json, workload.csv: the workload mix of recent `allocate` events (calibration.py);
  2. candidate-NNNN/: a NEW versioned folder per run (never the serving checkpoint's), holding
     a checkpoint trained from a verified in-folder copy of the serving weights;
  3. candidate-NNNN/report.json: candidate vs serving policy on the same >= 10 held-out seeds,
     the paired test (promotion.paired_test) and the decision, written and fsynced first;
  4. only then the serving pointer (promotion.py) is rewritten, and only when the test passes.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keti_ray.calibration import WorkloadMix, workload_mix
from keti_ray.cluster import ClusterState, NodeSpec
from keti_ray.promotion import (
    MIN_PAIRED_SEEDS,
    PointerError,
    PromotionError,
    paired_test,
    read_pointer,
    write_pointer,
)
from keti_ray.replay import replay, tune_workload
from keti_ray.telemetry import TelemetryStore


class RetrainError(RuntimeError):
    """A retrain that cannot proceed; the message names the step and what is missing."""


@dataclass
class RetrainSettings:
    telemetry: Path
    out: Path
    nodes: list[NodeSpec]
    serving: str | None = None  # a checkpoint folder or a serving pointer JSON (None: FGD)
    pointer: Path | None = None  # the serving pointer to rewrite on promotion
    config: str | None = None  # rllib config file; None = rllib_configs/retrain.yaml
    iterations: int = 10
    window_s: float | None = None  # only events this recent (None = all)
    workload_pods: int = 4000
    eval_seeds: tuple[int, ...] = tuple(range(9001, 9001 + MIN_PAIRED_SEEDS))
    min_improvement: float = 0.05  # margin (points of unallocated GPU) above 2 x the paired SE
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrainResult:
    promoted: bool
    candidate_pct: float
    serving_pct: float
    serving_policy: str
    candidate: Path | None
    report: Path
    test: dict[str, Any] = field(default_factory=dict)


NODES_ENV = "KETI_NODES_CSV"  # what the served allocator loads (serve/state.py ClusterSource)
SIM_NODES_ENV = "KETI_SIM_NODES"


def live_nodes(nodes_csv: str | Path | None = None) -> list[NodeSpec]:
    """The node list to retrain on: the given CSV, else the one the served allocator loads."""
    from keti_ray.simcluster import simulated_nodes
    from keti_ray.trace import load_nodes

    path = nodes_csv or os.environ.get(NODES_ENV)
    if path:
        return load_nodes(Path(path))
    sim = os.environ.get(SIM_NODES_ENV)
    if sim:
        try:
            count = int(sim)
        except ValueError:
            raise ValueError(f"${SIM_NODES_ENV} must be an integer, got {sim!r}") from None
        return simulated_nodes(count)
    raise ValueError(
        f"--nodes: give the live node list (the CSV the served allocator loads), or set "
        f"${NODES_ENV} / ${SIM_NODES_ENV} as the Serve app has them"
    )


def write_workload_csv(mix: WorkloadMix, path: Path, count: int, seed: int) -> Path:
    """The calibrated mix as an openb-style pod list, for the training environment."""
    pods = mix.sample(count, seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec"])
        for p in pods:
            writer.writerow(
                [
                    p.name,
                    p.cpu_milli,
                    p.memory_mib,
                    p.num_gpu,
                    p.gpu_milli,
                    "|".join(sorted(p.gpu_spec)),
                ]
            )
    return path


def serving_policy(serving: str | None) -> tuple[str, str | None, str | None]:
    """(policy name, checkpoint, sha256) of what serves now: a pointer, a folder, or FGD."""
    if serving is None:
        return "fgd", None, None
    path = Path(serving)
    if path.is_file():
        try:
            record = read_pointer(path)
        except PointerError as exc:
            raise RetrainError(f"--from: {exc}") from None
        return record["policy"], record.get("checkpoint"), record.get("sha256")
    if path.is_dir():
        return "ppo", str(path), None
    raise RetrainError(f"--from: {serving} is neither a checkpoint folder nor a serving pointer")


def held_out_workloads(nodes: list[NodeSpec], mix: WorkloadMix, seeds) -> list[tuple[int, list]]:
    """One workload per held-out seed: pods drawn from the mix, tuned to 1.3x the GPUs."""
    capacity = ClusterState(nodes).total_gpu_milli
    count = max(200, int(1.5 * capacity / 1000 / max(_mean_gpu(mix), 0.05)))
    return [(seed, tune_workload(mix.sample(count, seed), capacity, 1.3, seed)) for seed in seeds]


def held_out_scores(
    make_allocator: Callable[[int], Any],
    nodes: list[NodeSpec],
    workloads: list[tuple[int, list]],
    typical,
) -> list[float]:
    """Unallocated GPU % at the end of replaying each held-out workload (one per seed)."""
    results = []
    for seed, workload in workloads:
        result = replay(nodes, workload, make_allocator(seed), seed, typical)
        curve = result.unallocated_gpu_pct
        results.append(float(curve[~np.isnan(curve)][-1]))
    return results


def new_candidate_dir(out: Path, serving_checkpoint: str | None) -> Path:
    """A fresh `candidate-NNNN` folder under `out` (mkdir fails rather than reuse one)."""
    out.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("-")[1]) for p in out.glob("candidate-[0-9]*") if p.is_dir()]
    version = max(taken, default=0) + 1
    while True:
        path = out / f"candidate-{version:04d}"
        try:
            path.mkdir()
        except FileExistsError:
            version += 1
            continue
        break
    if serving_checkpoint:
        serving = Path(serving_checkpoint).resolve()
        mine = path.resolve()
        if serving == mine or serving.is_relative_to(mine) or mine.is_relative_to(serving):
            raise RetrainError(
                f"candidate folder {path} overlaps the serving checkpoint {serving}; "
                "choose an --out outside it"
            )
    return path


def _mean_gpu(mix: WorkloadMix) -> float:
    return float(sum(w * s[1] * s[2] / 1000 for s, w in zip(mix.shapes, mix.weights, strict=True)))


def make_policy_factory(name: str, checkpoint: str | None, sha: str | None, typical):
    """A per-seed allocator factory for the held-out evaluation."""
    from keti_ray.allocators import HEURISTICS, make_allocator

    if name in HEURISTICS and not checkpoint:
        return lambda seed: make_allocator(name, typical, seed)
    from keti_ray.rl.checkpoint import verify_checkpoint
    from keti_ray.rl.policy import load_ppo_allocator

    if checkpoint:
        verify_checkpoint(checkpoint, expected_sha256=sha)
    return lambda seed: load_ppo_allocator(checkpoint, typical=typical, seed=seed)


def retrain(
    settings: RetrainSettings,
    train_fn: Callable[..., dict] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> RetrainResult:
    """The whole loop; `train_fn(cfg, iterations, out_dir, init_from)` trains the candidate."""
    say = on_phase or (lambda _: None)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    store = TelemetryStore(settings.telemetry, writer="retrain")
    since = time.time() - settings.window_s if settings.window_s else None

    say("calibrating from telemetry")
    try:
        mix = workload_mix(store.read("events"), since=since)
    except ValueError as exc:
        raise RetrainError(f"calibration: {exc}") from None
    (out / "mix.json").write_text(json.dumps(mix.as_dict(), indent=1) + "\n")
    workload_csv = write_workload_csv(
        mix, out / "workload.csv", settings.workload_pods, settings.seed
    )

    if len(set(settings.eval_seeds)) < MIN_PAIRED_SEEDS:
        raise RetrainError(
            f"eval_seeds: at least {MIN_PAIRED_SEEDS} distinct held-out seeds are needed for "
            f"the paired test, got {len(set(settings.eval_seeds))}"
        )
    name, checkpoint, sha = serving_policy(settings.serving)
    candidate_dir = new_candidate_dir(out, checkpoint)
    source = f"{name}@{checkpoint}" if checkpoint else name
    say(f"training candidate {candidate_dir.name} from {source}")
    if train_fn is None:
        from keti_ray.rl.retrain import train_candidate as train_fn
    trained = train_fn(
        config=settings.config,
        workload_csv=workload_csv,
        nodes=settings.nodes,
        iterations=settings.iterations,
        out_dir=candidate_dir,
        init_from=checkpoint,
        seed=settings.seed,
    )
    candidate, candidate_sha = Path(trained["checkpoint"]), trained["sha256"]

    say("evaluating candidate against the serving policy on paired held-out replays")
    typical = mix.typical()
    workloads = held_out_workloads(settings.nodes, mix, settings.eval_seeds)
    serving_scores = held_out_scores(
        make_policy_factory(name, checkpoint, sha, typical), settings.nodes, workloads, typical
    )
    candidate_scores = held_out_scores(
        make_policy_factory("ppo", str(candidate), candidate_sha, typical),
        settings.nodes,
        workloads,
        typical,
    )
    try:
        test = paired_test(serving_scores, candidate_scores, settings.min_improvement)
    except PromotionError as exc:
        raise RetrainError(str(exc)) from None
    promoted = test["promote"]
    serving_pct = float(np.mean(serving_scores))
    candidate_pct = float(np.mean(candidate_scores))
    report = {
        "serving": {
            "policy": name,
            "checkpoint": checkpoint,
            "unallocated_gpu_pct": serving_pct,
            "per_seed": serving_scores,
        },
        "candidate": {
            "checkpoint": str(candidate),
            "sha256": candidate_sha,
            "unallocated_gpu_pct": candidate_pct,
            "per_seed": candidate_scores,
            "training": trained.get("report"),
        },
        "eval_seeds": list(settings.eval_seeds),
        "nodes": len(settings.nodes),
        "paired_test": test,
        "promoted": promoted,
        "mix": mix.as_dict(),
        "time": time.time(),
    }
    report_path = candidate_dir / "report.json"
    _write_durably(report_path, json.dumps(report, indent=1, default=str) + "\n")
    if promoted and settings.pointer is not None:
        write_pointer(
            settings.pointer,
            candidate,
            candidate_sha,
            policy="ppo",
            report=str(report_path),
        )
        say(
            f"promoted: {candidate_pct:.2f}% < {serving_pct:.2f}% unallocated "
            f"(pointer {settings.pointer})"
        )
    else:
        say(
            f"kept the serving policy: candidate {candidate_pct:.2f}% vs serving {serving_pct:.2f}%"
            if not promoted
            else "better, but no --pointer to promote through"
        )
    return RetrainResult(promoted, candidate_pct, serving_pct, name, candidate, report_path, test)


def _write_durably(path: Path, text: str) -> None:
    """Write and fsync, so the report exists on disk before any pointer names it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
