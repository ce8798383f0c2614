"""A node agent's Prometheus metrics (CONTRACTS §5): `keti_agent_up`,
`keti_agent_gpu_healthy{gpu_uuid}`, `keti_agent_sm_occupancy_ratio{gpu_uuid}` and
`keti_agent_shimless_processes{gpu_uuid}`.

Why prometheus_client and not `ray.util.metrics`: Ray exports application metrics with a
`ray_` prefix, and the dashboard and alert rules in `kuberay/monitoring/` use the contract's
names as they are. Why a sink: the agent's telemetry sampler already reads every GPU once a
second, so this object sits between the sampler and the agent's sink and updates the gauges
from each batch; nothing samples twice. Each agent has its own registry, served over HTTP on
`$KETI_AGENT_METRICS_PORT` when that is set (the DaemonSet), else only kept in memory.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

from keti_ray.agent.telemetry import Record, TelemetrySink

log = logging.getLogger(__name__)

ENV_AGENT_METRICS_PORT = "KETI_AGENT_METRICS_PORT"
ENV_AGENT_METRICS_ADDR = "KETI_AGENT_METRICS_ADDR"


class AgentMetrics:
    """Gauges of one node agent, updated from its telemetry batches (a TelemetrySink)."""

    def __init__(
        self, backend: Any, gpus: list[Any], sink: TelemetrySink, port: int | None = None
    ) -> None:
        self.backend = backend
        self.gpus = list(gpus)
        self.sink = sink
        self.registry = CollectorRegistry()
        r = self.registry
        self.up = Gauge("keti_agent_up", "1 while this node agent runs", registry=r)
        self.healthy = Gauge(
            "keti_agent_gpu_healthy",
            "1 when the GPU answers the health probe",
            ["gpu_uuid"],
            registry=r,
        )
        self.occupancy = Gauge(
            "keti_agent_sm_occupancy_ratio",
            "SM utilisation of the GPU over the last sample (0-1)",
            ["gpu_uuid"],
            registry=r,
        )
        self.shimless = Gauge(
            "keti_agent_shimless_processes",
            "Compute processes on the GPU beyond those a shim status line reports for it",
            ["gpu_uuid"],
            registry=r,
        )
        self.up.set(1)
        for g in self.gpus:
            self.healthy.labels(g.uuid).set(1 if self._probe(g.uuid) else 0)
        self._server = None
        self.port: int | None = None
        self.error: str | None = None  # why the metrics are not served, if they should be
        if port is not None:
            try:
                self.serve(port)
            except OSError as exc:  # port taken (several agents on one host): keep the agent
                self.error = f"metrics not served on port {port}: {exc}"
                log.warning(self.error)

    @classmethod
    def for_agent(cls, agent: Any) -> AgentMetrics:
        """The metrics of a NodeAgent (its backend, GPUs and sink), served on
        `$KETI_AGENT_METRICS_PORT` when that is set."""
        port = os.environ.get(ENV_AGENT_METRICS_PORT)
        if port is not None and not port.isdigit():
            raise ValueError(f"{ENV_AGENT_METRICS_PORT}={port!r}: expected a port number 0-65535")
        return cls(agent.backend, agent.gpus, agent.sink, int(port) if port else None)

    def _probe(self, uuid: str) -> bool:
        if self.backend is None:
            return False
        try:
            return bool(self.backend.probe(uuid))
        except Exception:  # a GPU that cannot be asked is not healthy
            return False

    def observe(self, records: list[Record]) -> None:
        """Update the gauges from one sampler batch."""
        processes: dict[str, set[int]] = {}
        shim: dict[str, set[int]] = {}
        for r in records:
            kind = r.get("kind")
            if kind == "gpu":
                self.occupancy.labels(r["gpu_uuid"]).set(float(r["sm_pct"]) / 100.0)
            elif kind == "process" and "pid" in r:
                processes.setdefault(r["gpu_uuid"], set()).add(int(r["pid"]))
            elif kind == "shim" and "pid" in r and r.get("gpu_uuid"):
                shim.setdefault(str(r["gpu_uuid"]), set()).add(int(r["pid"]))
        for g in self.gpus:
            self.healthy.labels(g.uuid).set(1 if self._probe(g.uuid) else 0)
            # counted, not matched by PID: NVML reports host PIDs, the shim its container's
            seen = len(processes.get(g.uuid, ())) - len(shim.get(g.uuid, ()))
            self.shimless.labels(g.uuid).set(max(0, seen))

    def put(self, records: list[Record]) -> None:
        try:
            self.observe(records)
        except Exception:  # metrics must never cost the telemetry
            log.exception("agent metrics update failed")
        self.sink.put(records)

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if callable(flush):
            flush()

    def serve(self, port: int) -> int:
        """Serve `/metrics` on the port (0: any free one); returns the port."""
        addr = os.environ.get(ENV_AGENT_METRICS_ADDR, "0.0.0.0")
        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_port
        return self.port

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def stop(self) -> None:
        self.up.set(0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
