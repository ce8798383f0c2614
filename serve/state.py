"""The one place the cluster state lives: a named, detached Ray actor around AllocationService.

Every Serve replica talks to this actor, so concurrent requests are decided one after the
other against the same state and never double-book a GPU share. The actor restarts on
failure and rebuilds its placements from the journal.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import ray

from keti_ray.cluster import NodeSpec, PodRequest
from keti_ray.fragmentation import TypicalPods
from keti_ray.service import AllocationService, PolicySpec
from keti_ray.simcluster import simulated_nodes
from keti_ray.telemetry import TelemetryStore
from keti_ray.trace import load_nodes, load_pods

STATE_ACTOR_NAME = "keti-ray-allocator-state"
RAY_NAMESPACE = "keti-ray"


@dataclass
class ClusterSource:
    """Where the allocator's nodes (and FGD's typical pods) come from."""

    nodes_csv: str | None = None
    sim_nodes: int | None = None
    pods_csv: str | None = None
    journal: str | None = None
    telemetry_dir: str | None = None

    @classmethod
    def from_env(cls) -> ClusterSource:
        """Defaults for `serve deploy` / RayService, read from KETI_* variables."""
        sim = os.environ.get("KETI_SIM_NODES")
        return cls(
            nodes_csv=os.environ.get("KETI_NODES_CSV") or None,
            sim_nodes=int(sim) if sim else None,
            pods_csv=os.environ.get("KETI_PODS_CSV") or None,
            journal=os.environ.get("KETI_JOURNAL") or None,
            telemetry_dir=os.environ.get("KETI_TELEMETRY_DIR") or None,
        )

    def nodes(self) -> list[NodeSpec]:
        if self.nodes_csv:
            return load_nodes(self.nodes_csv)
        return simulated_nodes(self.sim_nodes or 4)

    def typical(self) -> TypicalPods | None:
        return TypicalPods.from_pods(load_pods(self.pods_csv)) if self.pods_csv else None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class AllocatorState:
    """Ray actor: methods run one at a time, which is what makes booking atomic."""

    def __init__(self, source: ClusterSource, policy: dict | None = None) -> None:
        if source.journal:
            Path(source.journal).parent.mkdir(parents=True, exist_ok=True)
        telemetry = None
        if source.telemetry_dir:
            telemetry = TelemetryStore(source.telemetry_dir, writer="allocator")
        self.service = AllocationService(
            source.nodes(),
            typical=source.typical(),
            policy=PolicySpec.from_config(policy),
            journal=source.journal,
            telemetry=telemetry,
        )
        self.telemetry = telemetry
        threading.Thread(target=self._maintenance_loop, daemon=True).start()

    def _maintenance_loop(self, period_s: float = 2.0) -> None:
        """Every couple of seconds: follow the serving pointer, push queued events and turn
        the telemetry log into Parquet."""
        stop = threading.Event()
        while not stop.wait(period_s):
            self.service.refresh_pointer()
            if self.telemetry is not None:
                self.service.push_events()
                self.telemetry.flush()

    def allocate(self, pod: PodRequest, dry_run: bool) -> dict:
        return self.service.decide_many([(pod, dry_run)])[0]

    def allocate_batch(self, pods: list[PodRequest], dry_run: bool) -> list[dict]:
        return self.service.allocate_batch(pods, dry_run)

    def allocate_many(self, requests: list[tuple[PodRequest, bool]]) -> list[dict]:
        """Concurrent single-pod requests that a replica batched: decided in arrival order."""
        return self.service.decide_many(requests)

    def release(self, name: str) -> bool:
        return self.service.release(name)

    def partition(self) -> dict:
        return self.service.partition()

    def health(self) -> dict:
        return self.service.health()

    def metrics_text(self) -> bytes:
        return self.service.metrics_text()

    def set_policy(self, config: dict | None) -> str:
        return self.service.set_policy(PolicySpec.from_config(config))

    def filter_nodes(self, pod: PodRequest, names: list[str]) -> tuple[list[str], dict[str, str]]:
        return self.service.filter_nodes(pod, names)

    def prioritize(self, pod: PodRequest, names: list[str]) -> list[dict]:
        return self.service.prioritize(pod, names)


def get_or_create_state(source: ClusterSource, policy: dict | None = None):
    """The cluster's state actor, created by whoever asks first (detached: outlives replicas)."""
    return AllocatorState.options(
        name=STATE_ACTOR_NAME,
        namespace=RAY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(source, policy)
