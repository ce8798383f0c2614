"""Fleet: one NodeAgent Ray actor on every alive node that carries the node resource.

Each agent is pinned to its node (hard NodeAffinity), takes no CPU, and is restarted by Ray
without limit (max_restarts=-1) on the same node when its process dies; `reconcile()` adds
agents for nodes that joined since.  Agents are named per node, so a second Fleet (or a
restarted driver with detached agents) finds the existing ones instead of duplicating them.
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from keti_ray.agent.node_agent import AgentConfig, NodeAgent
from keti_ray.agent.telemetry import TelemetrySink
from keti_ray.constants import RAY_NODE_RESOURCE

log = logging.getLogger(__name__)

AGENT_NAME_PREFIX = "keti-node-agent-"
NodeAgentActor = ray.remote(NodeAgent)


def agent_name(node_id: str) -> str:
    return AGENT_NAME_PREFIX + node_id


class Fleet:
    """Starts and tracks the node agents of a Ray cluster."""

    def __init__(
        self,
        config: AgentConfig | None = None,
        sink: TelemetrySink | None = None,
        *,
        resource: str = RAY_NODE_RESOURCE,
        detached: bool = False,
        namespace: str | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        self.sink = sink
        self.resource = resource
        self.detached = detached
        self.namespace = namespace
        self.agents: dict[str, Any] = {}  # node ID -> actor handle

    def nodes(self) -> list[str]:
        """IDs of the alive nodes that carry the node resource."""
        return sorted(
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get(self.resource, 0) > 0
        )

    def reconcile(self) -> list[str]:
        """Start an agent on every node that has none yet; return the nodes started on."""
        started = []
        for node_id in self.nodes():
            if node_id in self.agents:
                continue
            options: dict[str, Any] = {
                "name": agent_name(node_id),
                "get_if_exists": True,
                "num_cpus": 0,
                "max_restarts": -1,
                "max_task_retries": -1,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
            }
            if self.namespace is not None:
                options["namespace"] = self.namespace
            if self.detached:
                options["lifetime"] = "detached"
            self.agents[node_id] = NodeAgentActor.options(**options).remote(self.config, self.sink)
            started.append(node_id)
        # forget agents of nodes that left (Ray cannot restart them elsewhere: hard affinity)
        alive = set(self.nodes())
        for node_id in [n for n in self.agents if n not in alive]:
            del self.agents[node_id]
        return started

    start = reconcile

    def info(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        refs = {n: a.info.remote() for n, a in self.agents.items()}
        return {n: ray.get(r, timeout=timeout_s) for n, r in refs.items()}

    def partition_tables(self, timeout_s: float = 30.0) -> dict[str, list[dict[str, Any]]]:
        refs = {n: a.partition_table.remote() for n, a in self.agents.items()}
        return {n: ray.get(r, timeout=timeout_s) for n, r in refs.items()}

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every agent's plugins and telemetry, then end the actors for good."""
        for node_id, agent in list(self.agents.items()):
            try:
                ray.get(agent.stop.remote(), timeout=timeout_s)
            except Exception as e:
                log.warning("agent on %s did not stop cleanly: %s", node_id, e)
            ray.kill(agent, no_restart=True)
        self.agents.clear()


_LOCAL_AGENTS: list[Any] = []  # `keti-ray up`'s agents: handles kept for the driver's lifetime


def start_local_fleet(
    source: Any,
    *,
    max_agents: int = 8,
    root: str | Path | None = None,
    sink: TelemetrySink | None = None,
    timeout_s: float = 60.0,
) -> str:
    """`keti-ray up`: one NodeAgent per simulated GPU node, all on this (single) Ray node.

    `source` is anything with `.nodes()` -> NodeSpecs (serve.state.ClusterSource).  Each agent
    serves its node's GPUs, simulated under the node's name, so their UUIDs are the ones the
    allocator reports (keti_ray.podenv.simulated_gpu_uuid); no MPS, plugin sockets in a
    temporary directory (no kubelet here: the plugins serve and keep trying to register).
    Returns a one-line description for the console.
    """
    gpu_nodes = [s for s in source.nodes() if s.num_gpus > 0]
    chosen = gpu_nodes[:max_agents]
    if root is None:
        base = Path(tempfile.mkdtemp(prefix="keti-up-", dir="/tmp"))
        atexit.register(shutil.rmtree, base, True)  # sockets and status dirs of this run
    else:
        base = Path(root)
    here = ray.get_runtime_context().get_node_id()
    handles = []
    for spec in chosen:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name)[:40]
        config = AgentConfig(
            plugin_dir=str(base / safe),
            simulate=spec.num_gpus,
            node_name=spec.name,
            gpu_model=spec.model,
            mps=False,
            status_host_dir=str(base / safe / "status"),
            limits_host_dir=str(base / safe / "limits"),
        )
        handles.append(
            NodeAgentActor.options(
                name=agent_name(spec.name),
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            ).remote(config, sink)
        )
    ray.get([h.ping.remote() for h in handles], timeout=timeout_s)
    _LOCAL_AGENTS.extend(handles)
    more = f" of {len(gpu_nodes)} GPU nodes" if len(gpu_nodes) > len(chosen) else ""
    return f"{len(chosen)} node agents{more} (simulated GPUs, plugin sockets under {base})"
