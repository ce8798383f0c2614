"""A kubelet emulator for the device-plugin API v1beta1 (../shared/docs/deviceplugin-v1beta1.md).

What it does, as kubelet does:
- serves `Registration` on `<dir>/kubelet.sock` (real gRPC over a real Unix socket);
- Register rejects a version other than "v1beta1", a resource name that is not a valid
  extended resource name (`domain/name`, not in the kubernetes.io domain, no `requests.`
  prefix) and an endpoint that is not a plain file name in the directory; then, INSIDE
  Register, dials the plugin's socket back (10 s timeout) and calls GetDevicePluginOptions,
  so a plugin that is not serving yet makes Register fail;
- after Register, opens ListAndWatch and keeps it open, keeping the latest FULL device list;
  when a stream ends, that resource's devices are marked Unhealthy (capacity 0);
- a re-Register of the same resource replaces the old endpoint;
- `admit(resource, n)` is a pod admission: available = healthy and not allocated; calls
  GetPreferredAllocation when the plugin offered it, uses the preferred IDs when they are a
  valid answer (else the first available, like kubelet's own pick), then Allocate; an
  Allocate error fails the admission and allocates nothing;
- `restart()` is a kubelet restart: stop serving, close every plugin connection, delete every
  socket in the directory (keeping `kubelet_internal_checkpoint`), create a new kubelet.sock.
- with `pod_resources_dir`, serves the PodResources API v1 (`PodResourcesLister`) on
  `<pod_resources_dir>/kubelet.sock` (real gRPC, real Unix socket): `List` names each admitted
  pod's containers and the device IDs kubelet allocated to them (a pod appears once its
  Allocate returned, and stays while it runs, also when its devices turn Unhealthy: kubelet
  does not evict such pods, kubernetes#60388); `GetAllocatableResources` returns the
  registered devices that are Healthy (kubernetes PR #104123); `Get` one pod by name.
  `remove_pod()` is a pod's end: its devices are free and it leaves `List`.

What it does NOT cover: the checkpoint file's content and allocation recovery across restarts,
the 5-minute grace period before forgetting a resource (devices are only marked Unhealthy),
the Topology Manager's NUMA alignment, PreStartContainer's 30 s wait and call order, CDI device
injection, pods without devices in `List` (kubelet lists every active pod), CPU and memory
assignments and dynamic resources in PodResources, its `Watch`, and node status/capacity
reporting to the API server.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.deviceplugin._gen import api_pb2_grpc as pbg
from keti_ray.deviceplugin._gen import podresources_pb2 as prpb
from keti_ray.deviceplugin._gen import podresources_pb2_grpc as prgrpc

SUPPORTED_VERSIONS = ("v1beta1",)
CHECKPOINT = "kubelet_internal_checkpoint"
DIAL_TIMEOUT_S = 10.0
_QUALIFIED = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
    r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$"
)


def is_extended_resource_name(name: str) -> bool:
    """kubelet's rule: a qualified `domain/name`, not native (kubernetes.io), not `requests.`."""
    if not _QUALIFIED.match(name) or len(name.split("/", 1)[1]) > 63:
        return False
    domain = name.split("/", 1)[0]
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return False
    return not name.startswith("requests.")


class AdmissionError(Exception):
    """A pod admission that kubelet would fail (no capacity, or the plugin's Allocate failed)."""


@dataclass
class Endpoint:
    """A registered plugin, as kubelet's device manager keeps it."""

    resource: str
    socket: Path
    options: pb.DevicePluginOptions
    channel: grpc.Channel
    stub: pbg.DevicePluginStub
    registered_at: float
    devices: dict[str, pb.Device] = field(default_factory=dict)
    updates: list[tuple[float, dict[str, str]]] = field(default_factory=list)  # (t, id->health)
    stream: object = None
    stream_open: bool = False


class _PodResources(prgrpc.PodResourcesListerServicer):
    """kubelet's PodResourcesLister v1, answered from the emulator's device manager state."""

    def __init__(self, kubelet: KubeletEmulator) -> None:
        self.k = kubelet

    def _pod(self, key: tuple[str, str]) -> prpb.PodResources:
        ns, name = key
        with self.k._cv:
            containers = dict(self.k.pod_devices.get(key, {}))
        return prpb.PodResources(
            name=name,
            namespace=ns,
            containers=[
                prpb.ContainerResources(
                    name=c,
                    devices=[
                        prpb.ContainerDevices(resource_name=r, device_ids=sorted(ids))
                        for r, ids in sorted(by_res.items())
                    ],
                )
                for c, by_res in containers.items()
            ],
        )

    def List(self, request, context):  # noqa: N802 (gRPC names)
        with self.k._cv:
            keys = list(self.k.pod_devices)
        return prpb.ListPodResourcesResponse(pod_resources=[self._pod(k) for k in keys])

    def Get(self, request, context):  # noqa: N802
        key = (request.pod_namespace, request.pod_name)
        with self.k._cv:
            known = key in self.k.pod_devices
        if not known:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
            )
        return prpb.GetPodResourcesResponse(pod_resources=self._pod(key))

    def GetAllocatableResources(self, request, context):  # noqa: N802
        out = []
        with self.k._cv:
            eps = list(self.k.endpoints.values())
        for ep in eps:
            for d in ep.devices.values():
                if d.health != "Healthy":
                    continue  # kubernetes PR #104123: unhealthy devices are not allocatable
                topo = prpb.TopologyInfo(nodes=[prpb.NUMANode(ID=n.ID) for n in d.topology.nodes])
                out.append(
                    prpb.ContainerDevices(
                        resource_name=ep.resource, device_ids=[d.ID], topology=topo
                    )
                )
        return prpb.AllocatableResourcesResponse(devices=out)


class KubeletEmulator(pbg.RegistrationServicer):
    """Registration server plus the device manager's calls into plugins."""

    def __init__(self, plugin_dir: str | Path, pod_resources_dir: str | Path | None = None) -> None:
        self.dir = Path(plugin_dir)
        self.socket = self.dir / "kubelet.sock"
        self.pod_resources_socket = (
            Path(pod_resources_dir) / "kubelet.sock" if pod_resources_dir is not None else None
        )
        self._pr_server: grpc.Server | None = None
        # (namespace, pod) -> container -> resource -> device IDs (the device manager's podDevices)
        self.pod_devices: dict[tuple[str, str], dict[str, dict[str, set[str]]]] = {}
        self._pods_admitted = 0
        self._server: grpc.Server | None = None
        self._cv = threading.Condition()
        self.endpoints: dict[str, Endpoint] = {}
        self.registrations: list[tuple[float, str]] = []  # (time, resource) of each success
        self.rejections: list[str] = []
        self.allocated: dict[str, set[str]] = {}  # resource -> allocated device IDs
        self.restarted_at: float | None = None

    # ----- lifecycle ------------------------------------------------------------------------
    def start(self) -> KubeletEmulator:
        self.dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pbg.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        if self.pod_resources_socket is not None and self._pr_server is None:
            self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
            self.pod_resources_socket.unlink(missing_ok=True)
            prs = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            prgrpc.add_PodResourcesListerServicer_to_server(_PodResources(self), prs)
            prs.add_insecure_port(f"unix://{self.pod_resources_socket}")
            prs.start()
            self._pr_server = prs
        return self

    def stop(self) -> None:
        if self._pr_server is not None:
            self._pr_server.stop(grace=0).wait(2)
            self._pr_server = None
            self.pod_resources_socket.unlink(missing_ok=True)
        if self._server is not None:
            self._server.stop(grace=0).wait(2)
            self._server = None
        with self._cv:
            eps = list(self.endpoints.values())
        for ep in eps:
            self._close(ep)
        self.socket.unlink(missing_ok=True)

    def restart(self, down_s: float = 0.0) -> float:
        """Kubelet restart: delete the sockets, re-create kubelet.sock; returns when it is up."""
        if self._server is not None:
            self._server.stop(grace=0).wait(2)
            self._server = None
        with self._cv:
            eps = list(self.endpoints.values())
        for ep in eps:
            self._close(ep)
        for p in self.dir.iterdir():
            if p.name != CHECKPOINT and p.is_socket():
                p.unlink()
        if down_s:
            time.sleep(down_s)
        self.start()
        self.restarted_at = time.monotonic()
        return self.restarted_at

    def _close(self, ep: Endpoint) -> None:
        if ep.stream is not None:
            ep.stream.cancel()
        ep.channel.close()

    # ----- Registration service ---------------------------------------------------------------
    def Register(self, request, context):  # noqa: N802 (gRPC names)
        def reject(msg: str):
            self.rejections.append(msg)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)

        if request.version not in SUPPORTED_VERSIONS:
            reject(f"Unsupported version {request.version!r}; supported: {SUPPORTED_VERSIONS}")
        if not is_extended_resource_name(request.resource_name):
            reject(f"invalid extended resource name {request.resource_name!r}")
        if not request.endpoint or "/" in request.endpoint:
            reject(f"endpoint must be a socket file name in {self.dir}, got {request.endpoint!r}")
        sock = self.dir / request.endpoint
        channel = grpc.insecure_channel(f"unix://{sock}")
        stub = pbg.DevicePluginStub(channel)
        try:
            grpc.channel_ready_future(channel).result(timeout=DIAL_TIMEOUT_S)
            options = stub.GetDevicePluginOptions(pb.Empty(), timeout=DIAL_TIMEOUT_S)
        except (grpc.FutureTimeoutError, grpc.RpcError) as e:
            channel.close()
            self.rejections.append(f"dial {sock}: {e}")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"failed to dial device plugin {sock}: {e}")
        ep = Endpoint(
            resource=request.resource_name,
            socket=sock,
            options=options,
            channel=channel,
            stub=stub,
            registered_at=time.monotonic(),
        )
        with self._cv:
            old = self.endpoints.get(request.resource_name)
            self.endpoints[request.resource_name] = ep
            self.registrations.append((time.monotonic(), request.resource_name))
            self._cv.notify_all()
        if old is not None:
            self._close(old)
        threading.Thread(target=self._list_and_watch, args=(ep,), daemon=True).start()
        return pb.Empty()

    def _list_and_watch(self, ep: Endpoint) -> None:
        stream = ep.stub.ListAndWatch(pb.Empty())
        ep.stream = stream
        ep.stream_open = True
        try:
            for resp in stream:
                with self._cv:
                    ep.devices = {d.ID: d for d in resp.devices}
                    ep.updates.append((time.monotonic(), {d.ID: d.health for d in resp.devices}))
                    self._cv.notify_all()
        except grpc.RpcError:
            pass
        finally:
            with self._cv:
                ep.stream_open = False
                # kubelet marks the devices of a plugin whose stream ended Unhealthy
                for d in ep.devices.values():
                    d.health = "Unhealthy"
                self._cv.notify_all()

    # ----- what tests read ----------------------------------------------------------
    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Wait until `predicate(self)` holds (re-checked on every change)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def devices(self, resource: str) -> dict[str, pb.Device]:
        with self._cv:
            ep = self.endpoints.get(resource)
            return dict(ep.devices) if ep else {}

    def healthy_ids(self, resource: str) -> list[str]:
        return sorted(i for i, d in self.devices(resource).items() if d.health == "Healthy")

    def capacity(self, resource: str) -> int:
        return len(self.healthy_ids(resource))

    # ----- the device manager's calls ----------------------------------------------
    def _endpoint(self, resource: str) -> Endpoint:
        with self._cv:
            ep = self.endpoints.get(resource)
        if ep is None:
            raise AdmissionError(f"no device plugin registered for {resource}")
        return ep

    def preferred(self, resource: str, size: int, must: tuple[str, ...] = ()) -> list[str]:
        ep = self._endpoint(resource)
        available = [
            i for i in self.healthy_ids(resource) if i not in self.allocated.get(resource, set())
        ]
        req = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=list(must),
                    allocation_size=size,
                )
            ]
        )
        resp = ep.stub.GetPreferredAllocation(req, timeout=10)
        return list(resp.container_responses[0].deviceIDs)

    def allocate(self, resource: str, ids: list[str]) -> pb.ContainerAllocateResponse:
        """Allocate exactly `ids` (no bookkeeping); raises grpc.RpcError as the plugin answers."""
        ep = self._endpoint(resource)
        req = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=list(ids))]
        )
        return ep.stub.Allocate(req, timeout=10).container_responses[0]

    def admit(
        self,
        resource: str,
        size: int,
        pod: tuple[str, str] | None = None,
        container: str = "main",
    ) -> tuple[list[str], pb.ContainerAllocateResponse]:
        """A pod's container asking for `size` of `resource`: preference, then Allocate;
        records the IDs under the pod (`(namespace, name)`; a fresh name when None)."""
        if pod is None:
            self._pods_admitted += 1
            pod = ("default", f"pod-{self._pods_admitted}")
        ep = self._endpoint(resource)
        taken = self.allocated.setdefault(resource, set())
        available = [i for i in self.healthy_ids(resource) if i not in taken]
        if len(available) < size:
            raise AdmissionError(f"{resource}: want {size}, {len(available)} available")
        ids: list[str] = []
        if ep.options.get_preferred_allocation_available:
            try:
                pref = self.preferred(resource, size)
            except grpc.RpcError as e:
                raise AdmissionError(f"GetPreferredAllocation failed: {e.details()}") from e
            if len(pref) == size and set(pref) <= set(available):
                ids = pref
        if not ids:
            ids = available[:size]
        try:
            resp = self.allocate(resource, ids)
        except grpc.RpcError as e:
            raise AdmissionError(f"Allocate failed: {e.details()}") from e
        taken.update(ids)
        with self._cv:
            by_c = self.pod_devices.setdefault(pod, {})
            by_c.setdefault(container, {}).setdefault(resource, set()).update(ids)
        return ids, resp

    def release(self, resource: str, ids: list[str]) -> None:
        self.allocated.get(resource, set()).difference_update(ids)
        with self._cv:
            for key, by_c in list(self.pod_devices.items()):
                for c, by_res in list(by_c.items()):
                    if resource in by_res:
                        by_res[resource].difference_update(ids)
                        if not by_res[resource]:
                            del by_res[resource]
                    if not by_res:
                        del by_c[c]
                if not by_c:
                    del self.pod_devices[key]

    def remove_pod(self, namespace: str, name: str) -> None:
        """The pod ended: its devices are free again and it leaves PodResources `List`."""
        with self._cv:
            by_c = self.pod_devices.pop((namespace, name), {})
        for by_res in by_c.values():
            for resource, ids in by_res.items():
                self.allocated.get(resource, set()).difference_update(ids)
