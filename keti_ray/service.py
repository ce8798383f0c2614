"""The allocation service: one cluster state, one policy, decisions that book atomically.

The Serve app keeps exactly one of these inside a Ray actor, so every replica decides against
the same state and no GPU share is booked twice. Bookings are appended to a journal (fsync'd
before the answer goes out) so a restarted service comes back with every acknowledged
placement.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from keti_ray.allocators import HEURISTICS, make_allocator
from keti_ray.allocators.base import Allocator
from keti_ray.cluster import ClusterState, ModelError, NodeSpec, Placement, PodRequest
from keti_ray.fragmentation import FragmentationModel, TypicalPods, fragmentation_pct
from keti_ray.podenv import gpu_memory_mib, gpu_pod_env, simulated_gpu_uuid, sm_pct_for_milli
from keti_ray.promotion import read_pointer
from keti_ray.telemetry import TelemetryStore

DEFAULT_MECHANISM = "mps"


class NoFit(Exception):
    """Nothing in the cluster can host the pod right now (HTTP 409)."""


@dataclass
class Decision:
    pod: str
    node: str
    gpus: list[dict]
    sm_pct: int
    env: dict[str, str]
    policy: str
    decision_ms: float
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {
            "pod": self.pod,
            "node": self.node,
            "gpus": self.gpus,
            "sm_pct": self.sm_pct,
            "env": self.env,
            "policy": self.policy,
            "decision_ms": round(self.decision_ms, 3),
            "dry_run": self.dry_run,
        }


@dataclass
class PolicySpec:
    """Which policy decides: a heuristic by name (`fgd` by default) or a PPO checkpoint
    (`ppo` = the shipped one, or `checkpoint: PATH` verified by its manifest)."""

    name: str = "fgd"
    checkpoint: str | None = None
    sha256: str | None = None
    pointer: str | None = None

    @classmethod
    def from_config(cls, config: dict | None) -> PolicySpec:
        """From a Serve user_config: {"policy": NAME}, {"checkpoint": PATH, "sha256": HEX},
        or {"pointer": PATH} (a serving pointer written by `keti-ray retrain`)."""
        config = dict(config or {})
        unknown = set(config) - {"policy", "checkpoint", "sha256", "pointer"}
        if unknown:
            raise ValueError(
                f"user_config: unknown key(s) {sorted(unknown)}; "
                "accepted: policy, checkpoint, sha256, pointer"
            )
        if config.get("pointer"):
            return cls.from_pointer(config["pointer"])
        checkpoint = config.get("checkpoint")
        name = config.get("policy") or ("ppo" if checkpoint else "fgd")
        return cls(name=name, checkpoint=checkpoint, sha256=config.get("sha256"))

    @classmethod
    def from_pointer(cls, path: str) -> PolicySpec:
        record = read_pointer(path)
        return cls(record["policy"], record.get("checkpoint"), record.get("sha256"), str(path))


@dataclass
class _Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.decisions = Counter(
            "keti_allocator_decisions", "Allocation decisions", ["policy", "outcome"], registry=r
        )
        self.latency = Histogram(
            "keti_allocator_decision_seconds",
            "Time to decide one pod",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.releases = Counter("keti_allocator_releases", "Released placements", registry=r)
        self.unallocated = Gauge(
            "keti_cluster_unallocated_gpu_pct", "GPU capacity no pod holds (%)", registry=r
        )
        self.fragmentation = Gauge(
            "keti_cluster_fragmentation_pct", "FGD fragmentation (% of GPU capacity)", registry=r
        )
        self.placements = Gauge("keti_cluster_placements", "Pods currently placed", registry=r)


def pod_key(name: str, namespace: str | None) -> str:
    return f"{namespace or 'default'}/{name}"


class AllocationService:
    """Cluster state + policy + journal. Thread-safe: one lock around every mutation."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        typical: TypicalPods | None = None,
        policy: PolicySpec | None = None,
        journal: str | Path | None = None,
        seed: int = 0,
        telemetry: TelemetryStore | None = None,
    ) -> None:
        self.state = ClusterState(nodes)
        self.typical = typical or TypicalPods.default()
        self.seed = seed
        self.mechanism = {name: DEFAULT_MECHANISM for name in self.state.names}
        self.gpu_uuids = {
            name: [simulated_gpu_uuid(name, g) for g in range(spec.num_gpus)]
            for name, spec in zip(self.state.names, self.state.specs, strict=True)
        }
        self._lock = threading.RLock()
        self._metrics = _Metrics()
        self._frag_model = FragmentationModel(self.typical, self.state.models)
        # FGD's scores for the extender when another policy decides (kept: its cache is warm).
        self._fgd_scorer = make_allocator("fgd", self.typical, seed)
        self.policy_spec = PolicySpec()
        self.policy: Allocator = make_allocator("fgd", self.typical, seed)
        self.policy_version = "fgd"
        self.policy_error: str | None = None
        if policy is not None:
            self.set_policy(policy)
        self.journal_path = Path(journal) if journal else None
        if self.journal_path is not None:
            self._replay_journal()
        self.telemetry = telemetry
        self._events: list[dict] = []
        self._last_event_push = time.monotonic()

    # ---- policy ------------------------------------------------------------------------

    def set_policy(self, spec: PolicySpec) -> str:
        """Swap the policy between two decisions; an unusable checkpoint leaves FGD serving."""
        if spec == self.policy_spec:
            return self.policy_version
        if spec.name in HEURISTICS and not spec.checkpoint:
            allocator = make_allocator(spec.name, self.typical, self.seed)
            version, error = spec.name, None
        elif spec.name != "ppo":
            accepted = ", ".join((*HEURISTICS, "ppo"))
            raise ValueError(f"user_config.policy {spec.name!r} is unknown; accepted: {accepted}")
        else:
            try:
                allocator, version = load_ppo(spec, self.typical, self.seed)
                error = None
            except Exception as exc:  # refused or broken checkpoint: keep serving with FGD
                allocator = make_allocator("fgd", self.typical, self.seed)
                version, error = "fgd", f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.policy, self.policy_version, self.policy_error = allocator, version, error
            self.policy_spec = spec
        return version

    def refresh_pointer(self) -> str:
        """Follow a serving pointer that a retrain has switched since the last look."""
        pointer = self.policy_spec.pointer
        if pointer:
            try:
                spec = PolicySpec.from_pointer(pointer)
            except ValueError as exc:
                self.policy_error = str(exc)
                return self.policy_version
            if spec != self.policy_spec:
                self.set_policy(spec)
        return self.policy_version

    # ---- decisions ---------------------------------------------------------------------

    def allocate(self, pod: PodRequest, dry_run: bool = False) -> Decision:
        """Decide and (unless dry_run) book; raises NoFit when nothing can host the pod."""
        with self._lock:
            start = time.perf_counter()
            if pod.name in self.state.placements:
                raise ModelError(f"pod {pod.name!r} is already placed; release it first", "name")
            placement = self.policy.place(self.state, pod)
            elapsed = time.perf_counter() - start
            self._metrics.latency.observe(elapsed)
            if placement is None:
                self._metrics.decisions.labels(self.policy_version, "nofit").inc()
                raise NoFit(f"no node can host pod {pod.name!r} now ({describe(pod)})")
            if not dry_run:
                self.state.allocate(pod, placement)
                self._journal(
                    {
                        "op": "allocate",
                        "pod": pod_to_dict(pod),
                        "placement": placement_to_dict(placement),
                    }
                )
                self._event("allocate", pod, placement.node, elapsed * 1000)
            self._metrics.decisions.labels(
                self.policy_version, "dry_run" if dry_run else "placed"
            ).inc()
            return self._decision(pod, placement, elapsed * 1000, dry_run)

    def allocate_batch(self, pods: Sequence[PodRequest], dry_run: bool = False) -> list[dict]:
        """Decide in order under one lock; each entry is a decision or an error with its status."""
        return self.decide_many([(pod, dry_run) for pod in pods])

    def decide_many(self, requests: Sequence[tuple[PodRequest, bool]]) -> list[dict]:
        """(pod, dry_run) requests in order, under one lock: each answer carries its HTTP status
        (200 with the decision, 409 when nothing fits, 422 for a request the model refuses)."""
        out: list[dict] = []
        with self._lock:
            for pod, dry_run in requests:
                try:
                    out.append({"status": 200, **self.allocate(pod, dry_run).as_dict()})
                except NoFit as exc:
                    out.append({"status": 409, "pod": pod.name, "error": str(exc)})
                except ModelError as exc:
                    out.append({"status": 422, "pod": pod.name, "error": str(exc)})
        return out

    def release(self, name: str) -> bool:
        with self._lock:
            entry = self.state.placements.get(name)
            placement = self.state.release(name)
            if placement is None or entry is None:
                return False
            self._journal({"op": "release", "pod": name})
            self._event("release", entry[0], placement.node, None)
            self._metrics.releases.inc()
            return True

    def _decision(
        self, pod: PodRequest, placement: Placement, ms: float, dry_run: bool
    ) -> Decision:
        node = self.state.names[placement.node]
        model = self.state.specs[placement.node].model
        uuids = [self.gpu_uuids[node][g] for g in placement.gpus]
        gpus = [
            {"index": g, "uuid": u, "milli": m}
            for g, u, m in zip(placement.gpus, uuids, placement.milli, strict=True)
        ]
        sm_pct = sm_pct_for_milli(pod.gpu_milli) if pod.num_gpu else 0
        env = {}
        if pod.num_gpu:
            memory = gpu_memory_mib(model)
            limit = memory * pod.gpu_milli // 1000 if pod.is_shared and memory else None
            env = gpu_pod_env(uuids, sm_pct, limit)
        return Decision(pod.name, node, gpus, sm_pct, env, self.policy_version, ms, dry_run)

    # ---- views ---------------------------------------------------------------------------

    def partition(self) -> dict:
        """Per node and GPU: who holds which SM share, by which mechanism."""
        with self._lock:
            nodes: dict[str, dict] = {}
            for name, spec in zip(self.state.names, self.state.specs, strict=True):
                if spec.num_gpus == 0:
                    continue
                nodes[name] = {
                    "model": spec.model,
                    "gpus": [
                        {
                            "index": g,
                            "uuid": self.gpu_uuids[name][g],
                            "free_milli": 0,
                            "partitions": [],
                        }
                        for g in range(spec.num_gpus)
                    ],
                }
            for pod, placement in self.state.placements.values():
                name = self.state.names[placement.node]
                for g, m in zip(placement.gpus, placement.milli, strict=True):
                    nodes[name]["gpus"][g]["partitions"].append(
                        {
                            "pod": pod.name,
                            "sm_pct": sm_pct_for_milli(m),
                            "milli": m,
                            "mechanism": self.mechanism[name] if m < 1000 else "exclusive",
                        }
                    )
            for name, entry in nodes.items():
                row = self.state.index[name]
                for gpu in entry["gpus"]:
                    gpu["free_milli"] = int(self.state.gpu_free[row, gpu["index"]])
            return {"nodes": nodes}

    def health(self) -> dict:
        with self._lock:
            return {
                "ready": True,
                "policy": self.policy_version,
                "policy_error": self.policy_error,
                "nodes": self.state.num_nodes,
                "gpus": int(self.state.gpu_count.sum()),
                "placements": len(self.state.placements),
            }

    def metrics_text(self) -> bytes:
        with self._lock:
            self._metrics.unallocated.set(self.state.unallocated_gpu_pct())
            self._metrics.fragmentation.set(fragmentation_pct(self.state, self._frag_model))
            self._metrics.placements.set(len(self.state.placements))
        return generate_latest(self._metrics.registry)

    # ---- kube-scheduler extender --------------------------------------------------------

    def filter_nodes(
        self, pod: PodRequest, names: Sequence[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Split candidate node names into those that can host the pod and why the others can't."""
        with self._lock:
            feasible = self.state.feasible_nodes(pod)
            ok, failed = [], {}
            for name in names:
                row = self.state.index.get(name)
                if row is None:
                    failed[name] = "node is not managed by keti-ray"
                elif feasible[row]:
                    ok.append(name)
                else:
                    failed[name] = f"insufficient resources for {describe(pod)}"
            return ok, failed

    def prioritize(self, pod: PodRequest, names: Sequence[str]) -> list[dict]:
        """Extender priorities 0-10: the policy's choice gets 10, the rest FGD's score scaled."""
        with self._lock:
            feasible = self.state.feasible_nodes(pod)
            choice = self.policy.place(self.state, pod)
            fgd = self.policy if self.policy_version == "fgd" else self._fgd_scorer
            scores = fgd.node_scores(self.state, pod)
            out = []
            for name in names:
                row = self.state.index.get(name)
                if row is None or not feasible[row]:
                    score = 0
                elif choice is not None and row == choice.node:
                    score = 10
                else:
                    score = min(9, int(scores[row]) // 10)
                out.append({"Host": name, "Score": score})
            return out

    # ---- telemetry -----------------------------------------------------------------------

    def _event(self, op: str, pod: PodRequest, node: int, ms: float | None) -> None:
        """Queue an allocator event for the telemetry store; pushed in batches."""
        if self.telemetry is None:
            return
        self._events.append(
            {
                "time": time.time(),
                "node": self.state.names[node],
                "op": op,
                "pod": pod.name,
                "policy": self.policy_version,
                "cpu_milli": pod.cpu_milli,
                "memory_mib": pod.memory_mib,
                "num_gpu": pod.num_gpu,
                "gpu_milli": pod.gpu_milli,
                "gpu_spec": "|".join(sorted(pod.gpu_spec)),
                "decision_ms": ms,
                "unallocated_gpu_pct": self.state.unallocated_gpu_pct(),
            }
        )
        if len(self._events) >= 256 or time.monotonic() - self._last_event_push > 1.0:
            self.push_events()

    def push_events(self) -> int:
        """Hand queued events to the telemetry store (durable once this returns)."""
        with self._lock:
            if self.telemetry is None or not self._events:
                return 0
            events, self._events = self._events, []
            self._last_event_push = time.monotonic()
            events[-1]["frag_pct"] = fragmentation_pct(self.state, self._frag_model)
            return self.telemetry.push("events", events)

    # ---- journal -------------------------------------------------------------------------

    def _journal(self, record: dict) -> None:
        if self.journal_path is None:
            return
        with self.journal_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _replay_journal(self) -> None:
        """Rebuild placements from the journal; a torn last line (crash mid-write) is dropped."""
        assert self.journal_path is not None
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.journal_path.exists():
            return
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("op") == "allocate":
                pod = pod_from_dict(record["pod"])
                placement = Placement(
                    **{k: tuple(v) if k != "node" else v for k, v in record["placement"].items()}
                )
                if pod.name not in self.state.placements:
                    self.state.allocate(pod, placement)
            elif record.get("op") == "release":
                self.state.release(record["pod"])


def load_ppo(spec: PolicySpec, typical: TypicalPods, seed: int) -> tuple[Allocator, str]:
    """The PPO allocator of a verified checkpoint and its version `ppo@<digest[:12]>`."""
    from keti_ray.rl.checkpoint import verify_checkpoint
    from keti_ray.rl.policy import DEFAULT_CHECKPOINT, load_ppo_allocator

    root = spec.checkpoint or DEFAULT_CHECKPOINT
    manifest = verify_checkpoint(root, expected_sha256=spec.sha256)
    allocator = load_ppo_allocator(root, typical=typical, seed=seed)
    return allocator, f"ppo@{manifest['checkpoint_sha256'][:12]}"


def describe(pod: PodRequest) -> str:
    gpu = f"{pod.num_gpu}x{pod.gpu_milli} milli GPU" if pod.num_gpu else "no GPU"
    return f"cpu_milli={pod.cpu_milli}, memory_mib={pod.memory_mib}, {gpu}"


def pod_to_dict(pod: PodRequest) -> dict:
    return {
        "name": pod.name,
        "cpu_milli": pod.cpu_milli,
        "memory_mib": pod.memory_mib,
        "num_gpu": pod.num_gpu,
        "gpu_milli": pod.gpu_milli,
        "gpu_spec": sorted(pod.gpu_spec),
    }


def pod_from_dict(data: dict) -> PodRequest:
    return PodRequest(
        name=data["name"],
        cpu_milli=data["cpu_milli"],
        memory_mib=data["memory_mib"],
        num_gpu=data["num_gpu"],
        gpu_milli=data["gpu_milli"],
        gpu_spec=frozenset(data.get("gpu_spec") or ()),
    )


def placement_to_dict(placement: Placement) -> dict:
    return {"node": placement.node, "gpus": list(placement.gpus), "milli": list(placement.milli)}
