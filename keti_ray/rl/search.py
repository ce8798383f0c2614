"""Policy search: CMA-ES over the candidate scorer's linear head, judged by full replays.

Why: the decisions where a better policy leaves FGD are rare and pay off only at the end of a
replay, so imitating a noisy rollout teacher kept the network on FGD's slot (issue 14). Here
the end metric itself is optimised. A weight vector scores each candidate linearly on top of
a fixed bonus for FGD's own slot (weights 0 = FGD exactly); each vector of a CMA-ES
generation (the `cma` package) is replayed on the full cluster, on training lists and design
seeds only (never 42-51), paired with FGD on the same tuned workloads, and CMA-ES moves the
weights by the mean paired difference at 130% arrived.

Every replay of one (list, seed) shares its FGD prefix (below the policy's `fgd_below_pct`
gate the policy is FGD), so that prefix is replayed once per worker task and each candidate
continues from a copy of it. The search writes an ordinary checkpoint: the network with the
linear head set and the MLP's output layer zeroed, which `keti-ray eval` and Serve load like
any other and PPO can fine-tune.

With `linear_groups` = 4 each pod class (`keti_ray.rl.pod_groups`) gets its own weight vector;
the features that only a shared pod has (its GPU's gap) are searched for the shared class
alone, since they are zero for every other pod.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keti_ray.evaluate import load_inputs
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.replay import ReplayProgress, offer_pods, tune_workload
from keti_ray.rl.candidates import (
    CANDIDATE_FEATURES,
    NUM_CANDIDATE_FEATURES,
    NUM_GLOBAL_FEATURES,
)
from keti_ray.rl.checkpoint import save_scorer
from keti_ray.rl.config import EVAL_ONLY_SEEDS, scorer_config
from keti_ray.rl.pod_groups import POD_GROUPS, group_count_problem
from keti_ray.rl.policy import PPOAllocator
from keti_ray.rl.scorer import CandidateScorer

EVALUATION_SEEDS = EVAL_ONLY_SEEDS  # 42-51: never searched on
CHECKPOINT_SUBDIR = "checkpoint"
REPORT_NAME = "search_report.json"
CURVE_NAME = "search_curve.png"
FGD_SLOT = CANDIDATE_FEATURES.index("is_fgd_choice")
SEARCHED = tuple(i for i in range(NUM_CANDIDATE_FEATURES) if i != FGD_SLOT)
SEARCHED_POSITION = {f: i for i, f in enumerate(SEARCHED)}  # a feature's column in the scales
# Zero for every pod but a shared one (the chosen GPU's free milli and its gap's counts).
SHARED_ONLY = tuple(
    CANDIDATE_FEATURES.index(name)
    for name in (
        "chosen_gpu_free_after",
        "chosen_gpu_free_before",
        "gap_count_before",
        "gap_count_after",
        "dead_sliver_after",
    )
)


def searched_coordinates(groups: int) -> list[tuple[int, int]]:
    """(group, feature) of every searched weight: all but FGD's slot for one group; per pod
    class, the shared-only features for the shared class alone."""
    if groups == 1:
        return [(0, f) for f in SEARCHED]
    return [
        (g, f)
        for g, name in enumerate(POD_GROUPS)
        for f in SEARCHED
        if name == "shared" or f not in SHARED_ONLY
    ]


@dataclass(frozen=True)
class SearchSettings:
    """What one search run does (all of it is recorded in the report and checkpoint info)."""

    lists: tuple[str, ...] = ("default", "gpushare40", "gpuspec25", "multigpu20", "cpu200")
    generations: int = 20
    popsize: int = 16
    sigma0: float = 0.3
    seeds_per_generation: int = 5  # one (list, seed) pair each, cycling over the lists
    seed_base: int = 20_000  # design seeds: seed_base + generation * seeds_per_generation + j
    validation_seeds: tuple[int, ...] = tuple(range(30_000, 30_010))  # of every list
    fgd_below_pct: float = 80.0
    k: int = 16
    random_extra: int = 2
    hidden: int = 64
    tune: float = 1.3
    workers: int = max(1, (os.cpu_count() or 2))
    chunks_per_pair: int = 3  # worker tasks per (list, seed): each replays the prefix once
    time_budget_s: float = 0.0  # stop starting generations after this (0 = no limit)
    seed: int = 0
    linear_groups: int = 1  # 1, or one weight vector per pod class (len(POD_GROUPS))
    cma_diagonal: bool = False  # separable CMA-ES (a diagonal covariance: many weights)
    new_feature_step: float = 3.0  # sigma0 multiplier of features an earlier search lacked
    nodes_csv: str = field(default_factory=lambda: str(default_nodes_csv()))

    def __post_init__(self) -> None:
        bad = EVALUATION_SEEDS.intersection(self.design_seeds()) | EVALUATION_SEEDS.intersection(
            self.validation_seeds
        )
        if bad:
            raise ValueError(
                f"seeds {sorted(bad)} are evaluation seeds (42-51) and are never searched on; "
                "move seed_base or validation_seeds"
            )
        if self.popsize < 4 or self.generations < 1 or self.seeds_per_generation < 1:
            raise ValueError("popsize must be >= 4, generations and seeds_per_generation >= 1")
        if not self.new_feature_step > 0:
            raise ValueError(
                f"new_feature_step (--new-feature-step) must be > 0, got {self.new_feature_step}"
            )
        problem = group_count_problem(self.linear_groups)
        if problem:
            raise ValueError(f"linear_groups (--linear-groups) {problem}")

    def design_seeds(self) -> range:
        return range(self.seed_base, self.seed_base + self.generations * self.seeds_per_generation)

    def pairs(self, generation: int) -> list[tuple[str, int]]:
        first = self.seed_base + generation * self.seeds_per_generation
        return [
            (self.lists[(first + j) % len(self.lists)], first + j)
            for j in range(self.seeds_per_generation)
        ]


def linear_net(weights: np.ndarray, hidden: int = 64, seed: int = 0) -> CandidateScorer:
    """A scorer whose logits are exactly `weights` . candidate features (MLP output zeroed);
    `weights` is one vector [features] or one per pod class [groups, features]."""
    rows = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    torch.manual_seed(seed)
    net = CandidateScorer(
        NUM_CANDIDATE_FEATURES,
        NUM_GLOBAL_FEATURES,
        hidden,
        linear_head=True,
        linear_groups=rows.shape[0],
    )
    with torch.no_grad():
        net.logit.weight.zero_()
        net.logit.bias.zero_()
        net.linear.weight.copy_(torch.as_tensor(rows, dtype=torch.float32))
    return net.eval()


def full_weights(u: np.ndarray, scales: np.ndarray, groups: int = 1) -> np.ndarray:
    """Searched coordinates (unit = one spread of the feature) -> the linear head's weights:
    [features] for one group, [groups, features] per pod class."""
    w = np.zeros((groups, NUM_CANDIDATE_FEATURES))
    w[:, FGD_SLOT] = 1.0  # FGD's slot keeps a bonus of 1; the rest must outweigh it to deviate
    for value, (g, f) in zip(np.asarray(u), searched_coordinates(groups), strict=True):
        w[g, f] = value / scales[SEARCHED_POSITION[f]]
    return w[0] if groups == 1 else w


def stored_scales(init: dict[str, Any]) -> dict[str, float]:
    """{feature: spread} of an earlier search's report (reports without names list the
    searched features in this code's order)."""
    scales = [float(x) for x in init["feature_scales"]]
    names = init.get("feature_names") or [CANDIDATE_FEATURES[i] for i in SEARCHED]
    if len(names) != len(scales):
        raise ValueError(f"{len(scales)} feature_scales for {len(names)} feature_names")
    return dict(zip(names, scales, strict=True))


def new_features(init: dict[str, Any]) -> list[str]:
    """Searched features an earlier search did not have (they start at weight 0)."""
    stored = stored_scales(init)
    return [CANDIDATE_FEATURES[i] for i in SEARCHED if CANDIDATE_FEATURES[i] not in stored]


def continued_scales(init: dict[str, Any], measure: Callable[[], np.ndarray]) -> np.ndarray:
    """The earlier search's spreads, so its weights keep their units; spreads of features it
    did not have are measured (`measure()`, all searched features in order)."""
    stored = stored_scales(init)
    names = [CANDIDATE_FEATURES[f] for f in SEARCHED]
    measured = measure() if any(name not in stored for name in names) else None
    return np.array(
        [stored[name] if name in stored else measured[i] for i, name in enumerate(names)],
        dtype=np.float64,
    )


def start_coordinates(init: dict[str, Any], scales: np.ndarray, groups: int) -> np.ndarray:
    """An earlier search's final weights as this search's coordinates. One vector for all
    pods starts every pod class from it (the same policy); a per-class report needs groups.
    A feature the earlier search did not have starts at 0, which is again the same policy."""
    weights = init["weights"]
    nested = all(isinstance(v, dict) for v in weights.values())
    if nested and groups == 1:
        raise ValueError(
            "the earlier search has one weight vector per pod class; continue it with "
            "--linear-groups 4"
        )
    added = set(new_features(init))

    def row(named: dict[str, float]) -> list[float]:
        return [0.0 if f in added else named[f] for f in CANDIDATE_FEATURES]

    rows = [row(weights[name]) for name in POD_GROUPS] if nested else [row(weights)] * groups
    return np.array(
        [rows[g][f] * scales[SEARCHED_POSITION[f]] for g, f in searched_coordinates(groups)],
        dtype=np.float64,
    )


def weights_report(weights: np.ndarray) -> dict[str, Any]:
    """The report's `weights`: {feature: w}, or {pod class: {feature: w}} per class."""
    rows = np.atleast_2d(weights).round(6).tolist()
    named = [dict(zip(CANDIDATE_FEATURES, row, strict=True)) for row in rows]
    return named[0] if len(named) == 1 else dict(zip(POD_GROUPS, named, strict=True))


# ---- worker side ------------------------------------------------------------------------------


def _prefix(settings: SearchSettings, name: str, seed: int) -> tuple[list, ReplayProgress, Any]:
    nodes, pods, typical, capacity = load_inputs(settings.nodes_csv, str(pod_list_csv(name)))
    workload = tune_workload(pods, capacity, settings.tune, seed)
    policy = PPOAllocator(
        linear_net(np.zeros(NUM_CANDIDATE_FEATURES), settings.hidden),
        typical=typical,
        k=settings.k,
        random_extra=settings.random_extra,
        seed=seed,
        fgd_below_pct=settings.fgd_below_pct,
    )
    gate = settings.fgd_below_pct
    progress = offer_pods(
        ReplayProgress.start(nodes),
        workload,
        policy,
        stop=lambda state: 100.0 - state.unallocated_gpu_pct() >= gate,
    )
    return workload, progress, policy


def _finish(workload: list, progress: ReplayProgress, policy: PPOAllocator, net) -> dict:
    """Continue a copy of the prefix with `net` (None = FGD) and read the figures."""
    run = progress.copy()
    branch = copy.deepcopy(policy)
    if net is None:
        offer_pods(run, workload, branch.gen.fgd)
        deviations = 0
    else:
        branch.set_net(net)
        branch.decisions = branch.fgd_agreements = 0
        offer_pods(run, workload, branch)
        deviations = branch.decisions - branch.fgd_agreements
    curve = 100.0 - run.buckets.curve()
    return {"unallocated_130": float(curve[130]), "deviations": int(deviations)}


def evaluate_chunk(task: tuple) -> list[dict]:
    """One worker task: the FGD prefix of (list, seed) once, then FGD and each weight vector."""
    settings, name, seed, weight_rows, with_fgd = task
    torch.set_num_threads(1)
    workload, progress, policy = _prefix(settings, name, seed)
    out = []
    if with_fgd:
        out.append({"row": -1, **_finish(workload, progress, policy, None)})
    for row, weights in weight_rows:
        net = linear_net(np.asarray(weights), settings.hidden)
        out.append({"row": row, **_finish(workload, progress, policy, net)})
    return out


# ---- driver side ------------------------------------------------------------------------------


def paired_differences(
    pool: ProcessPoolExecutor | None,
    settings: SearchSettings,
    pairs: Sequence[tuple[str, int]],
    weight_sets: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[policies, pairs] policy - FGD at 130% arrived, FGD's values, and deviations from FGD."""
    n = len(weight_sets)
    chunks = max(1, min(settings.chunks_per_pair, n))
    tasks = []
    for name, seed in pairs:
        for c in range(chunks):
            rows = [(i, weight_sets[i].tolist()) for i in range(c, n, chunks)]
            tasks.append((settings, name, seed, rows, c == 0))
    results = pool.map(evaluate_chunk, tasks) if pool else map(evaluate_chunk, tasks)
    diff = np.zeros((n, len(pairs)))
    dev = np.zeros((n, len(pairs)))
    fgd = np.zeros(len(pairs))
    for (_, name, seed, _, _), rows in zip(tasks, results, strict=True):
        j = pairs.index((name, seed))
        for r in rows:
            if r["row"] < 0:
                fgd[j] = r["unallocated_130"]
        for r in rows:
            if r["row"] >= 0:
                diff[r["row"], j] = r["unallocated_130"]
                dev[r["row"], j] = r["deviations"]
    return diff - fgd[None, :], fgd, dev


def feature_scales(settings: SearchSettings) -> np.ndarray:
    """Spread of each candidate feature around FGD's slot (so one search step is comparable
    across features), from FGD's own decisions past the gate on one design seed per list."""
    from keti_ray.rl.candidates import CandidateGenerator

    spreads = []
    for name in settings.lists:
        seed = settings.seed_base - 1 - settings.lists.index(name)
        workload, progress, policy = _prefix(settings, name, seed)
        gen: CandidateGenerator = policy.gen
        for pod in workload[progress.next_index : progress.next_index + 400]:
            cands = gen.candidates(progress.state, pod)
            if cands is None:
                continue
            if cands.size > 1:
                f = cands.features[: cands.size]
                spreads.append(f[1:] - f[:1])
            progress.state.allocate(pod, cands.placement(0))
    stacked = np.concatenate(spreads) if spreads else np.ones((1, NUM_CANDIDATE_FEATURES))
    # Rounded as the report stores them, so a continued search uses exactly the same units.
    return np.maximum(stacked.std(axis=0)[list(SEARCHED)].astype(np.float64), 1e-3).round(6)


def run_search(
    settings: SearchSettings,
    out: Path,
    log: Callable[[str], None] = print,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CMA-ES from FGD (all searched weights 0), or from `init` (an earlier search's report);
    returns the report (also written to `out`)."""
    import cma

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    groups = settings.linear_groups
    added: list[str] = []
    if init is not None:  # continue a previous search: its spreads and its final weights
        added = new_features(init)
        scales = continued_scales(init, lambda: feature_scales(settings))
        u0 = start_coordinates(init, scales, groups)
        log(f"starting from a previous search ({len(init['curve'])} generations)")
        if added:
            log(f"new features (from weight 0, spreads measured): {', '.join(added)}")
    else:
        scales = feature_scales(settings)
        u0 = np.zeros(len(searched_coordinates(groups)))
        log(f"feature spreads measured in {time.perf_counter() - started:.0f} s")
    options = {"popsize": settings.popsize, "seed": settings.seed + 1, "verbose": -9}
    if settings.cma_diagonal:
        options["CMA_diagonal"] = True
    if added:  # weights at 0 with no history: explore them wider
        options["CMA_stds"] = [
            settings.new_feature_step if CANDIDATE_FEATURES[f] in added else 1.0
            for _, f in searched_coordinates(groups)
        ]
    es = cma.CMAEvolutionStrategy(u0, settings.sigma0, options)
    log(f"searching {u0.size} weights ({groups} pod group(s)), population {settings.popsize}")
    curve: list[dict] = []
    workers = min(settings.workers, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        for g in range(settings.generations):
            if settings.time_budget_s and time.perf_counter() - started > settings.time_budget_s:
                log(f"time budget reached after {g} generations")
                break
            t0 = time.perf_counter()
            population = es.ask()
            weights = [full_weights(u, scales, groups) for u in population]
            # The distribution's mean rides along (last row) for the learning curve.
            weights.append(full_weights(es.mean, scales, groups))
            diff, fgd, dev = paired_differences(pool, settings, settings.pairs(g), weights)
            fitness = diff[:-1].mean(axis=1)
            es.tell(population, fitness.tolist())
            row = {
                "generation": g,
                "pairs": settings.pairs(g),
                "fgd_mean": round(float(fgd.mean()), 4),
                "mean_policy_minus_fgd": round(float(diff[-1].mean()), 4),
                "best_minus_fgd": round(float(fitness.min()), 4),
                "population_minus_fgd": round(float(fitness.mean()), 4),
                "mean_policy_deviations": round(float(dev[-1].mean()), 1),
                "sigma": round(float(es.sigma), 4),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            curve.append(row)
            log(
                f"gen {g:3d}  mean-policy - FGD {row['mean_policy_minus_fgd']:+.3f} pp  "
                f"best {row['best_minus_fgd']:+.3f}  population {row['population_minus_fgd']:+.3f}"
                f"  deviations {row['mean_policy_deviations']:.0f}  sigma {row['sigma']:.3f}  "
                f"{row['seconds']:.0f} s"
            )
        final = full_weights(np.asarray(es.mean), scales, groups)
        # Validation on design seeds no generation used: the result, paired with FGD and, when
        # the search continued an earlier one, with that one's weights (the choice between
        # them is made here, never on evaluation seeds).
        pairs = [(name, seed) for name in settings.lists for seed in settings.validation_seeds]
        contenders = [final] + ([full_weights(u0, scales, groups)] if init is not None else [])
        diff, fgd, dev = paired_differences(pool, settings, pairs, contenders)
    validation: dict[str, Any] = {"pairs": pairs, "fgd": fgd.round(3).tolist()}
    for row, label in enumerate(("result", "started_from")[: len(contenders)]):
        validation[label] = _paired_summary(diff[row], dev[row])
    if init is not None:
        validation["result_minus_started_from"] = _paired_summary(diff[0] - diff[1])
    validation["mean"] = validation["result"]["mean"]
    validation["se"] = validation["result"]["se"]
    log(
        f"validation (design seeds): policy - FGD {validation['mean']:+.3f} (se {validation['se']})"
    )
    report = {
        "settings": {k: v for k, v in asdict(settings).items() if k != "nodes_csv"},
        "feature_names": [CANDIDATE_FEATURES[i] for i in SEARCHED],
        "feature_scales": scales.round(6).tolist(),
        "weights": weights_report(final),
        "curve": curve,
        "started_from": None if init is None else init.get("checkpoint_sha256"),
        "validation": validation,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpus": os.cpu_count(),
    }
    manifest = save_search_checkpoint(out / CHECKPOINT_SUBDIR, final, settings, report)
    report["checkpoint_sha256"] = manifest["checkpoint_sha256"]
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    plot_search_curve(curve, out / CURVE_NAME)
    return report


def save_search_checkpoint(
    root: Path, weights: np.ndarray, settings: SearchSettings, report: dict[str, Any]
) -> dict[str, Any]:
    """An ordinary verified checkpoint (safetensors + config.json + manifest) of the result."""
    config = scorer_config(
        {
            "model": {
                "hidden": settings.hidden,
                "linear_head": True,
                "linear_groups": settings.linear_groups,
                "fgd_below_pct": settings.fgd_below_pct,
            },
            "env": {"k": settings.k, "random_extra": settings.random_extra},
        }
    )
    info = {
        "trained_on": list(settings.lists),
        "method": "cma-es over the linear head, full-cluster replays paired with FGD",
        "generations": len(report["curve"]),
        "design_seeds": [
            settings.seed_base,
            settings.seed_base + len(report["curve"]) * settings.seeds_per_generation - 1,
        ],
        "validation": {k: report["validation"][k] for k in ("mean", "se")},
    }
    return save_scorer(root, linear_net(weights, settings.hidden, settings.seed), config, info)


def plot_search_curve(curve: list[dict], path: Path) -> Path:
    """Learning curve: paired difference to FGD per generation (negative = better than FGD)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [r["generation"] for r in curve]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.axhline(0.0, color="grey", linestyle=":", label="FGD")
    ax.plot(gens, [r["mean_policy_minus_fgd"] for r in curve], marker="o", label="CMA-ES mean")
    ax.plot(gens, [r["population_minus_fgd"] for r in curve], alpha=0.6, label="population")
    ax.plot(gens, [r["best_minus_fgd"] for r in curve], alpha=0.6, label="best of generation")
    ax.set_xlabel("generation (each on new design seeds)")
    ax.set_ylabel("unallocated GPU % at 130% - FGD (pp)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _paired_summary(d: np.ndarray, deviations: np.ndarray | None = None) -> dict[str, Any]:
    """Mean paired difference, its standard error and the per-pair values."""
    out: dict[str, Any] = {
        "per_pair": d.round(3).tolist(),
        "mean": round(float(d.mean()), 4),
        "se": round(float(d.std(ddof=1) / np.sqrt(d.size)), 4) if d.size > 1 else None,
    }
    if deviations is not None:
        out["deviations_mean"] = round(float(deviations.mean()), 1)
    return out


__all__ = [
    "EVALUATION_SEEDS",
    "SearchSettings",
    "continued_scales",
    "feature_scales",
    "full_weights",
    "linear_net",
    "new_features",
    "paired_differences",
    "run_search",
    "searched_coordinates",
    "start_coordinates",
    "stored_scales",
    "weights_report",
]
