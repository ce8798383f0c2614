"""Training configuration files (rllib_configs/*.yaml): defaults, validation, clear errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "env": {
        "pods": ["default"],
        "num_nodes": 150,
        "k": 16,
        "random_extra": 2,
        "tune": 1.3,
        "frag_shaping": 1.0,
        "fgd_warmup_pct": [0.0, 0.0],
    },
    "model": {"hidden": 64, "fgd_below_pct": 0.0, "linear_head": False, "linear_groups": 1},
    "bc": {
        "episodes": 4,
        "epochs": 10,
        "lr": 0.003,
        "batch_size": 512,
        "value_epochs": 10,
        "entropy_coeff": 0.0,
        "fgd_target_prob": 1.0,
    },
    "ppo": {
        "lr": 0.0001,
        "gamma": 0.99,
        "lambda": 0.95,
        "train_batch_size": 2000,
        "minibatch_size": 250,
        "num_epochs": 4,
        "clip_param": 0.1,
        "entropy_coeff": 0.0,
        "vf_loss_coeff": 0.5,
        "vf_clip_param": 1000.0,
        "grad_clip": 1.0,
        "num_env_runners": 0,
    },
    "eval": {"every": 5, "seeds": [1000, 1001], "pods": ["default"], "num_nodes": None},
    # Distillation: behaviour cloning on the rollout teacher's decisions (keti_ray.rl.teacher)
    # instead of FGD's, on full-cluster replays of `pods` with `seeds`.
    "teacher": {
        "enabled": False,
        "pods": ["default"],
        "seeds": [2000],
        "horizon": 100,
        "top": 3,
        "start_pct": 80.0,
        "frag_weight": 1.0,
        "samples": 1,
        "early_keep": 0.1,
        "future": "sampled",
        "workers": 2,
        "late_weight": 1.0,
    },
}

# The openb evaluation seeds: never trained or tuned on.
EVAL_ONLY_SEEDS = frozenset(range(42, 52))


class ConfigError(ValueError):
    """A training configuration that cannot be used; names the key and the accepted form."""


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(
                f"config: unknown key {where}{key!r}; accepted: {', '.join(sorted(base))}"
            )
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config: {where}{key!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _check(cfg: dict) -> None:
    def positive(section: str, key: str, kind: type = int) -> None:
        value = cfg[section][key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"config: {section}.{key} must be a positive number, got {value!r}")
        if kind is int and int(value) != value:
            raise ConfigError(f"config: {section}.{key} must be an integer, got {value!r}")

    if not isinstance(cfg["model"]["linear_head"], bool):
        raise ConfigError(
            f"config: model.linear_head must be true or false, got {cfg['model']['linear_head']!r}"
        )
    from keti_ray.rl.pod_groups import group_count_problem

    problem = group_count_problem(cfg["model"]["linear_groups"])
    if problem:
        raise ConfigError(f"config: model.linear_groups {problem}")
    if not isinstance(cfg["seed"], int):
        raise ConfigError(f"config: seed must be an integer, got {cfg['seed']!r}")
    for key in ("k", "random_extra"):
        if not isinstance(cfg["env"][key], int):
            raise ConfigError(f"config: env.{key} must be an integer, got {cfg['env'][key]!r}")
    if cfg["env"]["k"] < 2:
        raise ConfigError(f"config: env.k must be >= 2, got {cfg['env']['k']}")
    if cfg["env"]["num_nodes"] is not None:
        positive("env", "num_nodes")
    for key in ("episodes", "epochs", "batch_size", "value_epochs"):
        if cfg["bc"][key] != 0:
            positive("bc", key)
    positive("bc", "lr", float)
    if not 0 < cfg["bc"]["fgd_target_prob"] <= 1:
        raise ConfigError(
            f"config: bc.fgd_target_prob must be in (0, 1], got {cfg['bc']['fgd_target_prob']!r}"
        )
    for key in ("train_batch_size", "minibatch_size", "num_epochs"):
        positive("ppo", key)
    for key in ("lr", "gamma", "lambda", "clip_param"):
        positive("ppo", key, float)
    positive("eval", "every")
    pods = cfg["env"]["pods"]
    if isinstance(pods, str):
        cfg["env"]["pods"] = [p.strip() for p in pods.split(",") if p.strip()]
    if not cfg["env"]["pods"]:
        raise ConfigError("config: env.pods must name at least one pod list")
    if not isinstance(cfg["eval"]["seeds"], list) or not cfg["eval"]["seeds"]:
        raise ConfigError("config: eval.seeds must be a non-empty list of integers")
    for section in ("eval", "teacher"):
        used = sorted(set(cfg[section]["seeds"]) & EVAL_ONLY_SEEDS)
        if used:
            raise ConfigError(
                f"config: {section}.seeds uses {used}: seeds 42-51 are for the final evaluation "
                "only (never train or tune on them)"
            )
    teacher = cfg["teacher"]
    if teacher["enabled"]:
        for key in ("horizon", "top", "samples", "workers"):
            positive("teacher", key)
        if isinstance(teacher["pods"], str):
            teacher["pods"] = [p.strip() for p in teacher["pods"].split(",") if p.strip()]
        if not teacher["pods"] or not teacher["seeds"]:
            raise ConfigError("config: teacher.pods and teacher.seeds must be non-empty lists")


def load_config(path: str | Path | None) -> dict[str, Any]:
    """The defaults, overridden by the YAML file at `path` (None = defaults only)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config {path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: must be a YAML mapping of sections")
        cfg = _merge(cfg, data, "")
    _check(cfg)
    return cfg


def scorer_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's config.json records: enough to rebuild the network and its
    candidate set (`keti-ray train` and `keti-ray search` both write it from here)."""
    from keti_ray.rl.candidates import CANDIDATE_FEATURES, GLOBAL_FEATURES

    return {
        "hidden": int(cfg["model"]["hidden"]),
        "linear_head": bool(cfg["model"].get("linear_head", False)),
        "linear_groups": int(cfg["model"].get("linear_groups", 1)),
        "k": int(cfg["env"]["k"]),
        "random_extra": int(cfg["env"]["random_extra"]),
        "fgd_below_pct": float(cfg["model"]["fgd_below_pct"]),
        "candidate_features": list(CANDIDATE_FEATURES),
        "global_features": list(GLOBAL_FEATURES),
    }


def follow_checkpoint(cfg: dict[str, Any], checkpoint_config: dict[str, Any]) -> dict[str, Any]:
    """Set `cfg`'s network and candidate fields to a checkpoint's, so that training that
    continues its weights (retrain, `keti-ray train --resume`) builds the same network and
    sees the same candidates; returns the fields that changed ({field: [before, after]})."""
    wanted = {
        ("model", "hidden"): int(checkpoint_config["hidden"]),
        ("model", "linear_head"): bool(checkpoint_config.get("linear_head", False)),
        ("model", "linear_groups"): int(checkpoint_config.get("linear_groups", 1)),
        ("model", "fgd_below_pct"): float(checkpoint_config.get("fgd_below_pct", 0.0)),
        ("env", "k"): int(checkpoint_config["k"]),
        ("env", "random_extra"): int(checkpoint_config["random_extra"]),
    }
    changed = {}
    for (section, key), value in wanted.items():
        if cfg[section].get(key) != value:
            changed[f"{section}.{key}"] = [cfg[section].get(key), value]
        cfg[section][key] = value
    return changed
