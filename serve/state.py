"""The one place the cluster state lives: a named, detached Ray actor around AllocationService.

Every Serve replica talks to this actor, so concurrent requests are decided one after the
other against the same state and never double-book a GPU share. The actor restarts on
failure and rebuilds its bookings and serving policy from the booking store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ray

from keti_ray.booking import AllocationService, PolicySpec, StoreUnavailable
from keti_ray.calibration import CalibrationError, workload_mix
from keti_ray.cluster import NodeSpec, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.k8s.live_mix import MIN_PODS
from keti_ray.k8s.runtime import api_from_env, initial_nodes, start_live_mix, start_sync
from keti_ray.simcluster import simulated_nodes
from keti_ray.telemetry import TelemetryStore
from keti_ray.trace import load_nodes, load_pods

log = logging.getLogger("keti_ray.serve.state")

STATE_ACTOR_NAME = "keti-ray-allocator-state"
RAY_NAMESPACE = "keti-ray"
POINTER_PERIOD_S = 2.0


@dataclass
class ClusterSource:
    """Where the allocator's nodes (and FGD's typical pods) come from, and where it keeps its
    bookings (`state`: a SQLite file; `journal` is the old name for it)."""

    nodes_csv: str | None = None
    sim_nodes: int | None = None
    pods_csv: str | None = None
    state: str | None = None
    telemetry_dir: str | None = None
    journal: str | None = None  # alias of `state` (an old JSON journal there is imported)

    def __post_init__(self) -> None:
        if self.state is None and self.journal is not None:
            self.state = self.journal

    @classmethod
    def from_env(cls) -> ClusterSource:
        """Defaults for `serve deploy` / RayService, read from KETI_* variables."""
        sim = os.environ.get("KETI_SIM_NODES")
        return cls(
            nodes_csv=os.environ.get("KETI_NODES_CSV") or None,
            sim_nodes=int(sim) if sim else None,
            pods_csv=os.environ.get("KETI_PODS_CSV") or None,
            state=os.environ.get("KETI_STATE") or os.environ.get("KETI_JOURNAL") or None,
            telemetry_dir=os.environ.get("KETI_TELEMETRY_DIR") or None,
        )

    def nodes(self) -> list[NodeSpec]:
        if self.nodes_csv:
            return load_nodes(self.nodes_csv)
        return simulated_nodes(self.sim_nodes or 4)

    def typical(self) -> TypicalPods | None:
        """FGD's typical pods: the mix of the allocator's own `allocate` events where the
        telemetry dir holds enough of them (what the live mix then keeps up to date), else
        the pods CSV's, else None (the service's default mix)."""
        live = self.telemetry_typical()
        if live is not None:
            return live
        return TypicalPods.from_pods(load_pods(self.pods_csv)) if self.pods_csv else None

    def telemetry_typical(self, min_pods: int = MIN_PODS) -> TypicalPods | None:
        if not self.telemetry_dir or not (Path(self.telemetry_dir) / "wal").is_dir():
            return None  # no telemetry yet (and do not create the directory here)
        try:
            events = TelemetryStore(self.telemetry_dir, writer="typical-mix").read("events")
            mix = workload_mix(events)
            return mix.typical() if mix.pods_seen >= min_pods else None
        except CalibrationError:
            return None
        except ValueError as exc:  # unreadable telemetry must not keep the allocator down
            log.warning("typical pods from %s: %s; using the default", self.telemetry_dir, exc)
            return None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class AllocatorState:
    """Ray actor: methods run one at a time, which is what makes booking atomic. A restart
    rebuilds everything from the booking store (bookings and the serving policy)."""

    def __init__(self, source: ClusterSource, policy: dict | None = None) -> None:
        telemetry = None
        if source.telemetry_dir:
            telemetry = TelemetryStore(source.telemetry_dir, writer="allocator")
        # On Kubernetes (KETI_K8S_API): the API server's nodes, then a watch (keti_ray/k8s).
        k8s_api = api_from_env()
        nodes, gpu_uuids = initial_nodes(k8s_api) if k8s_api else (source.nodes(), None)
        self.service = AllocationService(
            nodes,
            typical=source.typical(),
            policy=PolicySpec.from_config(policy) if policy else None,
            state=source.state,
            telemetry=telemetry,
            gpu_uuids=gpu_uuids,
            follow_pointer_s=POINTER_PERIOD_S,
        )
        self.k8s = start_sync(self.service, k8s_api) if k8s_api else None
        self.live_mix = start_live_mix(self.service, source.telemetry_dir) if k8s_api else None

    def ping(self) -> bool:
        return True

    def k8s_status(self) -> dict:
        """The cluster sync's view (keti_ray/k8s/sync.py), or that it is off."""
        return self.k8s.status() if self.k8s else {"enabled": False}

    def allocate_many(self, requests: list[tuple]) -> list[dict]:
        """Requests (pod, dry_run[, node, uid]) that a replica batched: decided in arrival
        order, booked in one transaction."""
        return self.service.decide_json(requests)

    def allocate_batch(self, pods: list[PodRequest], dry_run: bool) -> list[dict]:
        return self.service.allocate_batch(pods, dry_run)

    def release(self, key: str, uid: str | None = None) -> dict:
        """{"released": bool} or {"status": 503, "error": ...} when the store failed."""
        try:
            return {"released": self.service.release(key, uid)}
        except StoreUnavailable as exc:
            return {"status": 503, "error": str(exc)}

    def push_telemetry(
        self, node: str, batch: str, inventory: list[dict], records: list[dict]
    ) -> dict:
        """A node agent's batch: {"status": 200, ...}, 422 naming the record, or 503."""
        try:
            return {"status": 200, **self.service.push_telemetry(node, batch, inventory, records)}
        except ValueError as exc:
            return {"status": 422, "error": str(exc)}
        except StoreUnavailable as exc:
            return {"status": 503, "error": str(exc)}

    def telemetry_status(self) -> dict:
        return self.service.ingest.status()

    def partition(self) -> dict:
        return self.service.partition()

    def bookings(self) -> list[dict]:
        return self.service.bookings()

    def health(self) -> dict:
        return self.service.health()

    def metrics_text(self) -> bytes:
        return self.service.metrics_text()

    def count_refused(self, n: int = 1) -> None:
        self.service.count_refused(n)

    def set_policy(self, config: dict | None) -> str:
        return self.service.set_policy(PolicySpec.from_config(config))

    def filter_nodes(self, pod: PodRequest, names: list[str]) -> tuple[list[str], dict[str, str]]:
        return self.service.filter_nodes(pod, names)

    def prioritize(self, pod: PodRequest, names: list[str]) -> list[dict]:
        return self.service.prioritize(pod, names)

    def reconcile(self, live: dict[str, str]) -> dict:
        return self.service.reconcile(live)

    def replace_nodes(self, nodes: list[NodeSpec], gpu_uuids: dict[str, list[str]]) -> dict:
        return self.service.replace_nodes(nodes, gpu_uuids)


def get_or_create_state(source: ClusterSource, policy: dict | None = None):
    """The cluster's state actor, created by whoever asks first (detached: outlives replicas)."""
    return AllocatorState.options(
        name=STATE_ACTOR_NAME,
        namespace=RAY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(source, policy)
