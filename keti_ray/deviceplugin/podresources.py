"""A client of kubelet's PodResources API (v1): which pod's container holds which device IDs.

Kubelet serves it on `/var/lib/kubelet/pod-resources/kubelet.sock`.  `List` names the pods
whose devices kubelet has ALLOCATED (a pod appears only after Allocate returned), so it can
reconcile the plugin's records but cannot say which pod an Allocate is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from keti_ray.deviceplugin._gen import podresources_pb2 as prpb
from keti_ray.deviceplugin._gen import podresources_pb2_grpc as prgrpc

POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


@dataclass(frozen=True)
class Holding:
    """One container's devices of one resource."""

    namespace: str
    pod: str
    container: str
    device_ids: frozenset[str]

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"


class PodResourcesClient:
    """`List` and `GetAllocatableResources` over the kubelet's Unix socket."""

    def __init__(self, socket_path: str | Path = POD_RESOURCES_SOCKET, timeout_s: float = 5.0):
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._channel: grpc.Channel | None = None

    def _stub(self) -> prgrpc.PodResourcesListerStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        return prgrpc.PodResourcesListerStub(self._channel)

    def holdings(self, resource: str) -> list[Holding]:
        """Every container holding devices of `resource`, from `List`."""
        resp = self._stub().List(prpb.ListPodResourcesRequest(), timeout=self.timeout_s)
        out = []
        for pod in resp.pod_resources:
            for c in pod.containers:
                ids = {i for d in c.devices if d.resource_name == resource for i in d.device_ids}
                if ids:
                    out.append(Holding(pod.namespace, pod.name, c.name, frozenset(ids)))
        return out

    def allocatable(self, resource: str) -> set[str]:
        """Device IDs of `resource` kubelet knows (GetAllocatableResources)."""
        resp = self._stub().GetAllocatableResources(
            prpb.AllocatableResourcesRequest(), timeout=self.timeout_s
        )
        return {i for d in resp.devices if d.resource_name == resource for i in d.device_ids}

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
