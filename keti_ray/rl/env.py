"""The allocation environment: an episode replays one tuned, shuffled workload on a cluster.

Each step offers one pod that has at least two candidate placements; the action picks one
candidate slot (the observation's `action_mask` marks the real ones). Pods that fit nowhere
are skipped and pods with a single candidate are placed on it without asking, as the replay
protocol would. The reward of a step is the GPU share (in % of capacity) that got allocated
since the previous step, plus a potential-based shaping term -lambda x (change of the
cluster's FGD fragmentation, % of capacity) with a zero terminal potential, so that an
episode's return is exactly `100 - final unallocated GPU %` plus lambda x the empty
cluster's fragmentation (a constant of the drawn cluster): the return tracks the paper's metric.

Episodes can use a random subset of the cluster's nodes (`num_nodes`) so that one episode is
short enough to learn from; evaluation replays the full cluster with `keti_ray.replay`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from keti_ray.cluster import ClusterState, NodeSpec, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.replay import tune_workload
from keti_ray.rl.candidates import (
    FEATURE_CLIP,
    NUM_CANDIDATE_FEATURES,
    NUM_GLOBAL_FEATURES,
    CandidateGenerator,
    CandidateSet,
)

ENV_NAME = "keti-ray-alloc-v0"


@dataclass
class Workload:
    """One pod list with its typical-pod mix (FGD's fragmentation is measured against it)."""

    name: str
    pods: list[PodRequest]
    typical: TypicalPods


@dataclass
class EnvSettings:
    """Everything an episode depends on (besides the seed)."""

    nodes: list[NodeSpec]
    workloads: list[Workload]
    k: int = 16
    random_extra: int = 2
    num_nodes: int | None = 150  # nodes drawn per episode; None = the whole list
    tune: float = 1.3
    frag_shaping: float = 1.0
    fgd_warmup_pct: tuple[float, float] = (0.0, 0.0)  # FGD places pods until this arrived %
    fgd_below_pct: float = 0.0  # ... and while the cluster is less allocated (as the policy)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("env: nodes must list at least one node")
        if not self.workloads:
            raise ValueError("env: workloads must list at least one pod list")
        if self.num_nodes is not None and not 2 <= self.num_nodes:
            raise ValueError(f"env: num_nodes must be >= 2 or None, got {self.num_nodes}")
        if self.tune <= 0:
            raise ValueError(f"env: tune must be > 0, got {self.tune}")
        lo, hi = self.fgd_warmup_pct
        if not 0 <= lo <= hi:
            raise ValueError(
                f"env: fgd_warmup_pct must be (lo, hi) with 0 <= lo <= hi, got {lo, hi}"
            )


def observation_space(k: int) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "candidates": gym.spaces.Box(
                -FEATURE_CLIP, FEATURE_CLIP, (k, NUM_CANDIDATE_FEATURES), np.float32
            ),
            "globals": gym.spaces.Box(
                -FEATURE_CLIP, FEATURE_CLIP, (NUM_GLOBAL_FEATURES,), np.float32
            ),
            "action_mask": gym.spaces.Box(0.0, 1.0, (k,), np.float32),
        }
    )


def to_observation(cands: CandidateSet) -> dict[str, np.ndarray]:
    return {"candidates": cands.features, "globals": cands.globals, "action_mask": cands.mask}


class AllocationEnv(gym.Env):
    """Place the pods of one workload replay, one decision per pod with a real choice."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvSettings | dict | None = None) -> None:
        settings = config if isinstance(config, EnvSettings) else _settings_from_dict(config)
        self.settings = settings
        self.k = settings.k
        self.observation_space = observation_space(self.k)
        self.action_space = gym.spaces.Discrete(self.k)
        self._cands: CandidateSet | None = None
        self.episode_info: dict[str, Any] = {}

    # ---- gymnasium API -----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        s = self.settings
        wl = s.workloads[int(rng.integers(len(s.workloads)))]
        if s.num_nodes is None or s.num_nodes >= len(s.nodes):
            nodes = list(s.nodes)
        else:
            picks = np.sort(rng.choice(len(s.nodes), size=s.num_nodes, replace=False))
            nodes = [s.nodes[i] for i in picks]
        episode_seed = int(rng.integers(2**31 - 1))
        self.state = ClusterState(nodes)
        self.capacity = self.state.total_gpu_milli
        self.workload = tune_workload(wl.pods, self.capacity, s.tune, episode_seed)
        self.gen = CandidateGenerator(wl.typical, s.k, s.random_extra, episode_seed)
        self.warmup = float(rng.uniform(*s.fgd_warmup_pct))
        self.cursor = 0
        self.arrived = 0
        self.decisions = 0
        self.potential = self._potential()
        self._allocated = 0
        self.episode_info = {"workload": wl.name, "nodes": len(nodes), "pods": len(self.workload)}
        reward = self._advance()  # reward before the first decision is not part of a step
        self._pre_reward = reward
        if self._cands is None:  # nothing to decide at all: an empty episode is legal
            return self._empty_obs(), dict(self.episode_info)
        return to_observation(self._cands), dict(self.episode_info)

    def step(self, action):
        if self._cands is None:
            raise RuntimeError("step() called on a finished episode; call reset()")
        a = int(action)
        cands = self._cands
        if not 0 <= a < cands.size:
            raise ValueError(
                f"action {a} is not a valid candidate (valid: 0-{cands.size - 1}, see action_mask)"
            )
        pod = self.workload[self.cursor]
        self.state.allocate(pod, cands.placement(a))
        self.arrived += pod.gpu_request_milli
        self.cursor += 1
        self.decisions += 1
        reward = self._advance() + self._pre_reward
        self._pre_reward = 0.0
        terminated = self._cands is None
        info: dict[str, Any] = {}
        if terminated:
            info = dict(self.episode_info)
            info.update(self.final_metrics())
            obs = self._empty_obs()
        else:
            obs = to_observation(self._cands)
        return obs, float(reward), terminated, False, info

    # ---- internals ---------------------------------------------------------------------------

    def final_metrics(self) -> dict[str, float]:
        return {
            "unallocated_gpu_pct": self.state.unallocated_gpu_pct(),
            "decisions": self.decisions,
        }

    def _potential(self) -> float:
        """-lambda x cluster fragmentation in % of capacity (0 when shaping is off)."""
        if self.settings.frag_shaping == 0 or self.capacity == 0:
            return 0.0
        frag = float(self.gen.frag.get(self.state).sum())
        return -self.settings.frag_shaping * 100.0 * frag / self.capacity

    def _advance(self) -> float:
        """Place or skip pods until one needs a decision; the reward earned on the way."""
        self._cands = None
        while self.cursor < len(self.workload):
            pod = self.workload[self.cursor]
            cands = self.gen.candidates(self.state, pod)
            warm = 100.0 * self.arrived / max(self.capacity, 1) < self.warmup or (
                100.0 - self.state.unallocated_gpu_pct() < self.settings.fgd_below_pct
            )
            if cands is not None and cands.size >= 2 and not warm:
                self._cands = cands
                break
            if cands is not None:
                self.state.allocate(pod, cands.placement(cands.fgd_index))
            self.arrived += pod.gpu_request_milli
            self.cursor += 1
        now = self.state.gpu_allocated_milli()
        gained = 100.0 * (now - self._allocated) / max(self.capacity, 1)
        self._allocated = now
        new_potential = self._potential() if self._cands is not None else 0.0
        shaped = gained + new_potential - self.potential
        self.potential = new_potential
        return shaped

    def _empty_obs(self) -> dict[str, np.ndarray]:
        mask = np.zeros(self.k, dtype=np.float32)
        mask[0] = 1.0
        return {
            "candidates": np.zeros((self.k, NUM_CANDIDATE_FEATURES), dtype=np.float32),
            "globals": np.zeros(NUM_GLOBAL_FEATURES, dtype=np.float32),
            "action_mask": mask,
        }


def _settings_from_dict(config: dict | None) -> EnvSettings:
    """Build settings from an RLlib env_config dict (pod lists by name or path)."""
    from keti_ray.paths import default_nodes_csv, pod_list_csv
    from keti_ray.trace import load_nodes, load_pods

    config = dict(config or {})
    known = {
        "nodes_csv",
        "pods",
        "k",
        "random_extra",
        "num_nodes",
        "tune",
        "frag_shaping",
        "fgd_warmup_pct",
        "fgd_below_pct",
    }
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"env_config: unknown key(s) {unknown}; accepted: {sorted(known)}")
    nodes = load_nodes(config.get("nodes_csv") or default_nodes_csv())
    names = config.get("pods", ["default"])
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    workloads = []
    for name in names:
        pods = load_pods(pod_list_csv(name))
        workloads.append(Workload(name, pods, TypicalPods.from_pods(pods)))
    warm = config.get("fgd_warmup_pct", (0.0, 0.0))
    return EnvSettings(
        nodes=nodes,
        workloads=workloads,
        k=int(config.get("k", 16)),
        random_extra=int(config.get("random_extra", 2)),
        num_nodes=config.get("num_nodes", 150),
        tune=float(config.get("tune", 1.3)),
        frag_shaping=float(config.get("frag_shaping", 1.0)),
        fgd_warmup_pct=(float(warm[0]), float(warm[1])),
        fgd_below_pct=float(config.get("fgd_below_pct", 0.0)),
    )


def register() -> None:
    """Register the environment with gymnasium and RLlib under ENV_NAME."""
    if ENV_NAME not in gym.registry:
        gym.register(id=ENV_NAME, entry_point="keti_ray.rl.env:AllocationEnv")
    from ray.tune.registry import register_env

    register_env(ENV_NAME, lambda cfg: AllocationEnv(dict(cfg)))
