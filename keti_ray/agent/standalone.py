"""The node agent as the GPU DaemonSet runs it: stand-alone, outside the Ray cluster.

One process per GPU node serves the kubelet plugin (GPU decided by the pod's annotation,
records reconciled through PodResources), keeps the MPS daemon and its ceilings, samples
telemetry and pushes it to the allocator over HTTP, and publishes the node's GPUs on its Node
object.  Why not a Ray worker: a tenant GPU node that joins the Ray cluster can run any Ray
task or actor, and its Ray ports reach the GCS, so one compromised node is code execution in
the allocator's cluster; stand-alone, the node only holds an HTTP token that can push
telemetry and a service account that can list pods and patch nodes.  It also needs no Ray
head to be up for GPUs to stay schedulable, and no Ray in the node image's critical path.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from keti_ray.agent.node_agent import AgentConfig, NodeAgent
from keti_ray.agent.publish import NodePublisher
from keti_ray.agent.telemetry import HttpSink, ListSink, TelemetrySink

log = logging.getLogger(__name__)

TELEMETRY_PATH = "/telemetry"  # the allocator route the agent POSTs to (merge note)


class StandaloneAgent:
    """NodeAgent + HTTP telemetry push + node publishing + /metrics."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        allocator_url: str | None = None,
        token: str | None = None,
        publish: bool = True,
        metrics_port: int | None = None,
        sink: TelemetrySink | None = None,
    ) -> None:
        if not config.node_name:
            raise ValueError("node_name is required (the DaemonSet passes $NODE_NAME)")
        self.http_sink: HttpSink | None = None
        if sink is None and allocator_url:
            sink = self.http_sink = HttpSink(
                allocator_url.rstrip("/") + TELEMETRY_PATH, config.node_name, token=token
            )
        self.agent = NodeAgent(config, sink if sink is not None else ListSink())
        inventory = [asdict(g) for g in self.agent.gpus]
        if self.http_sink is not None:
            self.http_sink.inventory = inventory
        self.publisher: NodePublisher | None = None
        if publish and config.apiserver:
            from keti_ray.deviceplugin.decisions import api_client

            host = None if config.apiserver == "incluster" else config.apiserver
            self._api = api_client(host, config.apiserver_token)
            self.publisher = NodePublisher(self._api, config.node_name, self.agent.gpus).start()
        self._metrics_server = None
        if metrics_port is not None:
            from prometheus_client import start_http_server

            self._metrics_server, _ = start_http_server(
                metrics_port, addr="0.0.0.0", registry=self.agent.metrics.registry
            )

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.server_port

    def info(self) -> dict[str, Any]:
        out = self.agent.info()
        out["standalone"] = {
            "published": self.publisher.published if self.publisher else None,
            "publish_error": self.publisher.last_error if self.publisher else None,
            "pushed": self.http_sink.sent if self.http_sink else None,
            "dropped": self.http_sink.dropped if self.http_sink else None,
            "metrics_port": self.metrics_port,
        }
        return out

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
        self.agent.stop()
        if self.http_sink is not None:
            self.http_sink.flush(2.0)
            self.http_sink.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()


def read_token(path: str | Path | None) -> str | None:
    if path is None:
        return None
    text = Path(path).read_text().strip()
    if not text:
        raise ValueError(f"token file {path} is empty")
    return text
