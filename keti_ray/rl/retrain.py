"""Training a retrain candidate on the calibrated workload (used by keti_ray.retrain).

From a serving checkpoint, PPO continues from its RLModule (no behaviour cloning: the
serving policy is already the starting point); when FGD serves, the usual warm start applies
(behaviour cloning on FGD's choices, then PPO).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keti_ray.cluster import NodeSpec
from keti_ray.paths import REPO_DIR

RETRAIN_CONFIG = REPO_DIR / "rllib_configs" / "retrain.yaml"


def write_nodes_csv(nodes: Sequence[NodeSpec], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sn", "cpu_milli", "memory_mib", "gpu", "model"])
        for n in nodes:
            writer.writerow([n.name, n.cpu_milli, n.memory_mib, n.num_gpus, n.model])
    return path


def train_candidate(
    config: str | None,
    workload_csv: Path,
    nodes: Sequence[NodeSpec],
    iterations: int,
    out_dir: Path,
    init_from: str | None,
    seed: int,
) -> dict[str, Any]:
    """Train and save a candidate in `out_dir` (a new folder); returns checkpoint and SHA-256.

    A serving checkpoint is verified and its weights copied into `out_dir` before training
    starts, so training never reads files that a promotion or another retrain may rewrite.
    """
    import ray

    from keti_ray.rl import train as training
    from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES
    from keti_ray.rl.checkpoint import load_scorer
    from keti_ray.rl.config import follow_checkpoint, load_config

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config or RETRAIN_CONFIG)
    cfg["seed"] = seed
    cfg["env"]["pods"] = [str(workload_csv)]
    cfg["env"]["nodes_csv"] = str(write_nodes_csv(nodes, out_dir / "nodes.csv"))
    num = cfg["env"].get("num_nodes")
    cfg["env"]["num_nodes"] = None if num is None or num >= len(nodes) else max(2, num)
    cfg["eval"]["pods"] = [str(workload_csv)]
    if init_from is None:
        result = training.train(cfg, iterations, out_dir)
        return {
            "checkpoint": str(result.checkpoint),
            "sha256": result.report["checkpoint_sha256"],
            "report": {"started_from": "fgd (behaviour cloning)", "bc": result.report.get("bc")},
        }
    net, served_config, manifest = load_scorer(init_from, None, CANDIDATE_FEATURES, GLOBAL_FEATURES)
    follow_checkpoint(cfg, served_config)
    init = training.save_weights(net, out_dir / training.INIT_WEIGHTS)
    training.seed_everything(seed)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    algo = training.build_algo(cfg, init)
    try:
        stats = [training.iteration_stats(algo.train()) for _ in range(iterations)]
        saved = training.save_inference_checkpoint(
            algo.get_module().net,
            out_dir,
            cfg,
            {
                "iterations": iterations,
                "seed": seed,
                "init_from": init_from,
                "init_sha256": manifest["checkpoint_sha256"],
            },
        )
    finally:
        algo.stop()
        if started_here:
            ray.shutdown()
    return {
        "checkpoint": str(out_dir / training.CHECKPOINT_SUBDIR),
        "sha256": saved["checkpoint_sha256"],
        "report": {"started_from": init_from, "iterations": stats},
    }
