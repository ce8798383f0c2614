"""Training: behaviour cloning of FGD (plain torch), then RLlib PPO, with evaluation vs FGD.

The warm start copies FGD's decisions into the candidate scorer (cross-entropy on FGD's slot)
and fits the value head to the discounted returns of those episodes; PPO then starts from a
policy that already places pods like FGD. Evaluation replays full-length workloads with the
greedy policy and with FGD on fixed seeds (the same tuned workloads for both).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keti_ray.allocators import make_allocator
from keti_ray.cluster import ClusterState
from keti_ray.fragmentation import TypicalPods
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.replay import replay, tune_workload
from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES
from keti_ray.rl.checkpoint import load_scorer, save_scorer
from keti_ray.rl.config import follow_checkpoint, scorer_config
from keti_ray.rl.env import ENV_NAME, AllocationEnv, EnvSettings, Workload, observation_space
from keti_ray.rl.module import CandidateScorer
from keti_ray.rl.policy import PPOAllocator
from keti_ray.trace import load_nodes, load_pods

CHECKPOINT_SUBDIR = "checkpoint"
INIT_WEIGHTS = "init_weights.safetensors"  # the weights PPO starts from (a private copy)
REPORT_NAME = "report.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.set_num_threads(1)


def env_settings(cfg: dict[str, Any]) -> EnvSettings:
    env = cfg["env"]
    nodes = load_nodes(env.get("nodes_csv") or default_nodes_csv())
    workloads = []
    for name in env["pods"]:
        pods = load_pods(pod_list_csv(name))
        workloads.append(Workload(name, pods, TypicalPods.from_pods(pods)))
    return EnvSettings(
        nodes=nodes,
        workloads=workloads,
        k=env["k"],
        random_extra=env["random_extra"],
        num_nodes=env["num_nodes"],
        tune=env["tune"],
        frag_shaping=env["frag_shaping"],
        fgd_warmup_pct=tuple(env["fgd_warmup_pct"]),
        fgd_below_pct=float(cfg["model"]["fgd_below_pct"]),
    )


def env_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The RLlib env_config (plain data; each env runner loads the trace itself)."""
    keys = ("pods", "num_nodes", "k", "random_extra", "tune", "frag_shaping", "fgd_warmup_pct")
    out = {k: cfg["env"][k] for k in keys}
    out["fgd_below_pct"] = float(cfg["model"]["fgd_below_pct"])
    out["pods"] = list(out["pods"])
    out["fgd_warmup_pct"] = list(out["fgd_warmup_pct"])
    return out


# ---- behaviour cloning --------------------------------------------------------------------------


@dataclass
class Demonstrations:
    cands: np.ndarray
    glob: np.ndarray
    mask: np.ndarray
    action: np.ndarray
    returns: np.ndarray
    unallocated: list[float] = field(default_factory=list)
    weights: np.ndarray | None = None  # per-sample loss weight (None: all 1)


def collect_fgd(settings: EnvSettings, episodes: int, seed: int, gamma: float) -> Demonstrations:
    """FGD's decisions (always candidate slot `fgd_index`) and discounted returns-to-go."""
    env = AllocationEnv(settings)
    parts: dict[str, list] = {k: [] for k in ("cands", "glob", "mask", "action", "returns")}
    finals = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        rewards = []
        done = env._cands is None
        while not done:
            parts["cands"].append(obs["candidates"])
            parts["glob"].append(obs["globals"])
            parts["mask"].append(obs["action_mask"])
            action = env._cands.fgd_index
            parts["action"].append(action)
            obs, reward, done, _, info = env.step(action)
            rewards.append(reward)
        if rewards:
            finals.append(info["unallocated_gpu_pct"])
        ret = np.zeros(len(rewards))
        acc = 0.0
        for i in range(len(rewards) - 1, -1, -1):
            acc = rewards[i] + gamma * acc
            ret[i] = acc
        parts["returns"].extend(ret.tolist())
    return Demonstrations(
        np.asarray(parts["cands"], dtype=np.float32),
        np.asarray(parts["glob"], dtype=np.float32),
        np.asarray(parts["mask"], dtype=np.float32),
        np.asarray(parts["action"], dtype=np.int64),
        np.asarray(parts["returns"], dtype=np.float32),
        finals,
    )


def _bc_loss(
    logits: torch.Tensor, action: torch.Tensor, mask: torch.Tensor, target_prob: float
) -> torch.Tensor:
    """Cross-entropy to FGD's slot; with target_prob < 1 the rest of the probability is spread
    over the other valid candidates, so the warm-started policy keeps exploring under PPO."""
    if target_prob >= 1.0:
        return torch.nn.functional.cross_entropy(logits, action)
    others = mask.clone()
    others[torch.arange(len(action)), action] = 0.0
    count = others.sum(-1, keepdim=True)
    target = torch.where(count > 0, others * (1 - target_prob) / count.clamp(min=1), others)
    target[torch.arange(len(action)), action] = torch.where(
        count.squeeze(-1) > 0, torch.full_like(count.squeeze(-1), target_prob), 1.0
    )
    logp = torch.log_softmax(logits, -1)
    return -(target * torch.where(mask > 0.5, logp, torch.zeros_like(logp))).sum(-1).mean()


def behaviour_clone(net: CandidateScorer, demos: Demonstrations, bc: dict, seed: int) -> dict:
    """Fit the policy head to FGD's choices and the value head to the returns."""
    gen = torch.Generator().manual_seed(seed)
    cands, glob, mask = map(torch.from_numpy, (demos.cands, demos.glob, demos.mask))
    action, returns = torch.from_numpy(demos.action), torch.from_numpy(demos.returns)
    weights = None if demos.weights is None else torch.from_numpy(demos.weights)
    n = len(action)
    stats: dict[str, Any] = {
        "samples": n,
        "policy_loss": None,
        "value_loss": None,
        "accuracy": None,
        "history": [],
    }
    if n == 0:
        return stats
    policy_params = list(net.encoder.parameters()) + list(net.logit.parameters())
    value_params = list(net.value_encoder.parameters()) + list(net.value.parameters())
    for params, epochs, kind in (
        (policy_params, bc["epochs"], "policy"),
        (value_params, bc["value_epochs"], "value"),
    ):
        opt = torch.optim.Adam(params, lr=bc["lr"])
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            total, batches = 0.0, 0
            for start in range(0, n, bc["batch_size"]):
                idx = order[start : start + bc["batch_size"]]
                if kind == "policy":
                    logits = net.logits(cands[idx], glob[idx], mask[idx])
                    if weights is None:
                        loss = _bc_loss(logits, action[idx], mask[idx], bc["fgd_target_prob"])
                    else:
                        per = torch.nn.functional.cross_entropy(
                            logits, action[idx], reduction="none"
                        )
                        loss = (per * weights[idx]).sum() / weights[idx].sum()
                    if bc["entropy_coeff"]:
                        logp = torch.log_softmax(logits, -1)
                        entropy = -(logp.exp() * logp).sum(-1).mean()
                        loss = loss - bc["entropy_coeff"] * entropy
                else:
                    pred = net.values(cands[idx], glob[idx], mask[idx])
                    loss = torch.nn.functional.mse_loss(pred, returns[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
                batches += 1
            stats[f"{kind}_loss"] = float(loss.detach())
            if kind == "policy":
                with torch.no_grad():
                    hit = net.logits(cands, glob, mask).argmax(-1) == action
                stats["history"].append(
                    {
                        "epoch": epoch + 1,
                        "loss": round(total / max(batches, 1), 5),
                        "accuracy": round(float(hit.float().mean()), 4),
                    }
                )
    with torch.no_grad():
        logits = net.logits(cands, glob, mask)
        hit = logits.argmax(-1) == action
        stats["accuracy"] = float(hit.float().mean())
        off_fgd = action != 0  # the teacher (or FGD) left FGD's slot
        if bool(off_fgd.any()):
            stats["accuracy_where_label_is_not_fgd"] = float(hit[off_fgd].float().mean())
        stats["predicts_not_fgd"] = float((logits.argmax(-1) != 0).float().mean())
        probs = torch.softmax(logits, -1)
        stats["mean_prob_of_fgd_choice"] = float(probs[torch.arange(n), action].mean())
    return stats


def teacher_demonstrations(cfg: dict[str, Any], out: Path) -> tuple[Demonstrations, dict]:
    """The rollout teacher's decisions on full-cluster replays (cached in OUT by settings)."""
    from dataclasses import asdict

    from keti_ray.rl.teacher import TeacherSettings, collect_teacher

    t = cfg["teacher"]
    settings = TeacherSettings(
        horizon=int(t["horizon"]),
        top=int(t["top"]),
        start_pct=float(t["start_pct"]),
        frag_weight=float(t["frag_weight"]),
        samples=int(t["samples"]),
        early_keep=float(t["early_keep"]),
        future=str(t["future"]),
    )
    nodes_csv = str(cfg["env"].get("nodes_csv") or default_nodes_csv())
    key = {
        "settings": asdict(settings),
        "pods": list(t["pods"]),
        "seeds": list(t["seeds"]),
        "k": cfg["env"]["k"],
        "random_extra": cfg["env"]["random_extra"],
        "tune": cfg["env"]["tune"],
        "nodes_csv": nodes_csv,
    }
    cache, meta_path = out / "teacher_labels.npz", out / "teacher_labels.json"
    if cache.is_file() and meta_path.is_file() and json.loads(meta_path.read_text())["key"] == key:
        arrays = dict(np.load(cache))
        meta = json.loads(meta_path.read_text())
    else:
        started = time.perf_counter()
        arrays, episodes = collect_teacher(
            nodes_csv,
            list(t["pods"]),
            list(t["seeds"]),
            cfg["env"]["k"],
            cfg["env"]["random_extra"],
            settings,
            int(t["workers"]),
            cfg["env"]["tune"],
            str(out),
        )
        meta = {
            "key": key,
            "episodes": episodes,
            "seconds": round(time.perf_counter() - started, 1),
        }
        np.savez_compressed(cache, **arrays)
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    n = len(arrays["action"])
    weights = np.where(arrays["late"], float(t["late_weight"]), 1.0).astype(np.float32)
    demos = Demonstrations(
        arrays["cands"],
        arrays["glob"],
        arrays["mask"],
        arrays["action"],
        np.zeros(n, dtype=np.float32),
        [e["final_unallocated_pct"] for e in meta["episodes"]],
        weights,
    )
    changed = sum(e["changed_vs_fgd"] for e in meta["episodes"])
    decided = sum(e["teacher_decisions"] for e in meta["episodes"])
    return demos, {
        "samples": n,
        "teacher_decisions": decided,
        "changed_vs_fgd": changed,
        "label_seconds": meta.get("seconds"),
        "episodes": meta["episodes"],
    }


# ---- evaluation ---------------------------------------------------------------------------------


def evaluate_vs_fgd(
    net: CandidateScorer, cfg: dict[str, Any], seeds: list[int] | None = None
) -> dict[str, Any]:
    """Greedy policy and FGD replay the same tuned workloads; final unallocated GPU %."""
    ev = cfg["eval"]
    nodes_all = load_nodes(cfg["env"].get("nodes_csv") or default_nodes_csv())
    rows = []
    for name in ev["pods"]:
        pods = load_pods(pod_list_csv(name))
        typical = TypicalPods.from_pods(pods)
        for seed in seeds or ev["seeds"]:
            nodes = nodes_all
            if ev["num_nodes"]:
                pick = np.sort(
                    np.random.default_rng(seed).choice(len(nodes_all), ev["num_nodes"], False)
                )
                nodes = [nodes_all[i] for i in pick]
            capacity = ClusterState(nodes).total_gpu_milli
            workload = tune_workload(pods, capacity, cfg["env"]["tune"], seed)
            fgd = replay(nodes, workload, make_allocator("fgd", typical, seed), seed, typical)
            ppo_alloc = PPOAllocator(
                net,
                typical,
                cfg["env"]["k"],
                cfg["env"]["random_extra"],
                seed,
                cfg["model"]["fgd_below_pct"],
            )
            ppo = replay(nodes, workload, ppo_alloc, seed, typical)
            rows.append(
                {
                    "pods": name,
                    "seed": seed,
                    "fgd": round(ppo_final(fgd), 3),
                    "ppo": round(ppo_final(ppo), 3),
                    "ppo_agrees_with_fgd": round(
                        ppo_alloc.fgd_agreements / max(ppo_alloc.decisions, 1), 4
                    ),
                }
            )
    fgd_mean = float(np.mean([r["fgd"] for r in rows]))
    ppo_mean = float(np.mean([r["ppo"] for r in rows]))
    return {
        "fgd_unallocated_pct": round(fgd_mean, 3),
        "ppo_unallocated_pct": round(ppo_mean, 3),
        "ppo_minus_fgd": round(ppo_mean - fgd_mean, 3),
        "rows": rows,
    }


def ppo_final(result) -> float:
    """Unallocated GPU % at 130% arrived, or at the last arrived point reached."""
    curve = result.unallocated_gpu_pct
    valid = np.flatnonzero(~np.isnan(curve))
    return float(curve[130]) if not np.isnan(curve[130]) else float(curve[valid[-1]])


# ---- PPO ----------------------------------------------------------------------------------------


def build_algo(cfg: dict[str, Any], init_weights: Path | None):
    """The RLlib PPO algorithm on the new API stack, starting from `init_weights` (safetensors)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from keti_ray.rl.env import register
    from keti_ray.rl.module import CandidateScorerModule

    register()
    ppo = cfg["ppo"]
    spec = RLModuleSpec(
        module_class=CandidateScorerModule,
        observation_space=observation_space(cfg["env"]["k"]),
        action_space=__import__("gymnasium").spaces.Discrete(cfg["env"]["k"]),
        model_config={
            **cfg["model"],
            "init_weights": str(init_weights) if init_weights else None,
        },
    )
    config = (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config(cfg))
        .env_runners(
            num_env_runners=ppo["num_env_runners"],
            num_envs_per_env_runner=1,
            rollout_fragment_length="auto",
        )
        .learners(num_learners=0)
        .training(
            lr=ppo["lr"],
            gamma=ppo["gamma"],
            lambda_=ppo["lambda"],
            train_batch_size_per_learner=ppo["train_batch_size"],
            minibatch_size=ppo["minibatch_size"],
            num_epochs=ppo["num_epochs"],
            clip_param=ppo["clip_param"],
            entropy_coeff=ppo["entropy_coeff"],
            vf_loss_coeff=ppo["vf_loss_coeff"],
            vf_clip_param=ppo["vf_clip_param"],
            grad_clip=ppo["grad_clip"],
        )
        .rl_module(rl_module_spec=spec)
        .debugging(seed=cfg["seed"], log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=5)
    )
    return config.build_algo()


def iteration_stats(result: dict[str, Any]) -> dict[str, float | None]:
    """Return and losses of one `algo.train()` result, for the progress bar and the report."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get("default_policy", {})

    def num(value):
        try:
            return round(float(value), 4)
        except (TypeError, ValueError):
            return None

    return {
        "episode_return_mean": num(runners.get("episode_return_mean")),
        "policy_loss": num(learner.get("policy_loss")),
        "vf_loss": num(learner.get("vf_loss")),
        "entropy": num(learner.get("entropy")),
        "kl": num(learner.get("mean_kl_loss")),
        "env_steps": num(runners.get("num_env_steps_sampled_lifetime")),
    }


def save_inference_checkpoint(net, out_dir: Path, cfg: dict[str, Any], info: dict) -> dict:
    """Weights (safetensors) + config.json + manifest: what `--policy ppo:PATH` loads.

    `out_dir` is a training output folder (never a serving checkpoint: retrains write to a
    new versioned folder); its checkpoint/ is replaced as a whole.
    """
    target = out_dir / CHECKPOINT_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    meta = {"trained_on": list(cfg["env"]["pods"]), "model": cfg["model"], **info}
    return save_scorer(target, net, scorer_config(cfg), meta)


def save_weights(net: CandidateScorer, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@dataclass
class TrainResult:
    report: dict[str, Any]
    checkpoint: Path


Progress = Callable[[int, dict[str, Any]], None]


def train(
    cfg: dict[str, Any],
    iterations: int,
    out_dir: str | Path,
    resume: bool = False,
    on_iteration: Progress | None = None,
    on_phase: Callable[[str], None] | None = None,
    teacher_labels: Demonstrations | None = None,
) -> TrainResult:
    """Warm start (BC on FGD, or on `teacher_labels`), PPO iterations, checkpoint + report.

    With `resume`, PPO continues from OUT/checkpoint's verified weights (no optimizer state:
    nothing pickled is ever written or read).
    """
    import ray

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])
    started = time.perf_counter()
    report: dict[str, Any] = {"config": cfg, "iterations": [], "evaluations": []}
    phase = on_phase or (lambda text: None)
    init = out / INIT_WEIGHTS
    if resume:
        net, saved, _ = load_scorer(
            out / CHECKPOINT_SUBDIR, None, CANDIDATE_FEATURES, GLOBAL_FEATURES
        )
        # The checkpoint's network and candidates win over the config's (it is their weights
        # that continue); what the config said otherwise is recorded in the report.
        report["network_from_checkpoint"] = follow_checkpoint(cfg, saved)
        old = json.loads((out / REPORT_NAME).read_text()) if (out / REPORT_NAME).is_file() else {}
        report["iterations"] = old.get("iterations", [])
        report["evaluations"] = old.get("evaluations", [])
        report["bc"] = old.get("bc")
        report["wall_seconds_before"] = float(old.get("wall_seconds", 0.0))
    else:
        phase("behaviour cloning")
        settings = env_settings(cfg)
        space = observation_space(cfg["env"]["k"])
        net = CandidateScorer.from_model_config(
            space["candidates"].shape[-1], space["globals"].shape[-1], cfg["model"]
        )
        bc_stats: dict[str, Any] = {"samples": 0}
        demos = teacher_labels
        if demos is None and cfg["teacher"]["enabled"]:
            phase("teacher rollouts (labels)")
            demos, report["teacher"] = teacher_demonstrations(cfg, out)
        if demos is None and cfg["bc"]["episodes"]:
            demos = collect_fgd(settings, cfg["bc"]["episodes"], cfg["seed"], cfg["ppo"]["gamma"])
        if demos is not None:
            bc_stats = behaviour_clone(net, demos, cfg["bc"], cfg["seed"])
            if demos.unallocated:
                bc_stats["demo_unallocated_pct"] = round(float(np.mean(demos.unallocated)), 3)
        report["bc"] = bc_stats
    save_weights(net, init)
    done = len(report["iterations"])
    algo = None
    if iterations:
        if not ray.is_initialized():
            ray.init(
                address="local",  # always a private cluster, never another session's
                num_cpus=max(2, cfg["ppo"]["num_env_runners"] + 1),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        phase("building PPO")
        algo = build_algo(cfg, init)
    try:
        if not resume and cfg["eval"]["every"]:
            phase("evaluating the warm start")
            ev = evaluate_vs_fgd(net if algo is None else algo.get_module().net, cfg)
            ev["iteration"] = 0
            report["evaluations"].append(ev)
        for i in range(done + 1, done + iterations + 1):
            phase("PPO")
            result = algo.train()
            stats = iteration_stats(result)
            stats["iteration"] = i
            stats["seconds"] = round(time.perf_counter() - started, 1)
            report["iterations"].append(stats)
            evaluation = None
            if i % cfg["eval"]["every"] == 0 or i == done + iterations:
                phase("evaluating vs FGD")
                evaluation = evaluate_vs_fgd(algo.get_module().net, cfg)
                evaluation["iteration"] = i
                report["evaluations"].append(evaluation)
            report["status"] = f"running: iteration {i} of {done + iterations}"
            (out / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
            if on_iteration:
                on_iteration(i, {**stats, "eval": evaluation})
        phase("saving")
        final_net = net if algo is None else algo.get_module().net
        wall = time.perf_counter() - started
        report["wall_seconds"] = round(wall + report.get("wall_seconds_before", 0.0), 1)
        manifest = save_inference_checkpoint(
            final_net,
            out,
            cfg,
            {"iterations": done + iterations, "seed": cfg["seed"]},
        )
        report["status"] = "done"
        report["checkpoint"] = str(out / CHECKPOINT_SUBDIR)
        report["checkpoint_sha256"] = manifest["checkpoint_sha256"]
        (out / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        if algo is not None:
            algo.stop()
    return TrainResult(report, out / CHECKPOINT_SUBDIR)
