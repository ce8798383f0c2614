"""The NPU plugin: `keti.re.kr/npu`, one device ID per NPU.

Discovery: the Linux accel class (`<sysfs>/class/accel/accelN` with `<dev>/accel/accelN`) and
vendor device nodes (`<dev>/rbln*`, `<dev>/npu*`).  Where none is found, `NPU_DEVICE_COUNT`
emulated devices (default 1) are served, so a cluster without NPUs still exercises the path.
Health follows the device node: it exists -> Healthy, it is gone -> Unhealthy.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from keti_ray.constants import ENV_NPU_DEVICE_COUNT, NPU_PLUGIN_SOCKET, NPU_RESOURCE
from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.deviceplugin.server import HEALTHY, UNHEALTHY, DevicePluginServer, PluginError

NPU_ENDPOINT = NPU_PLUGIN_SOCKET
ENV_NPU_VISIBLE_DEVICES = "NPU_VISIBLE_DEVICES"
ENV_RBLN_DEVICES = "RBLN_DEVICES"  # Rebellions' runtime reads this
ANNOTATION_NPUS = "keti.re.kr/npu-devices"
_VENDOR_PATTERNS = ("rbln", "npu")
_NUM = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class NpuInfo:
    """One NPU: its device ID, its device node (None when emulated) and NUMA node."""

    id: str
    dev_path: str | None
    kind: str  # "accel", "rbln", "npu" or "emulated"
    numa_node: int | None = None
    vendor: str = ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def discover_npus(
    sysfs_root: str | Path = "/sys",
    dev_root: str | Path = "/dev",
    env: dict[str, str] | None = None,
) -> list[NpuInfo]:
    """Accel-class devices, then vendor nodes not already seen; else emulated devices."""
    sysfs_root, dev_root = Path(sysfs_root), Path(dev_root)
    env = os.environ if env is None else env
    found: list[NpuInfo] = []
    accel_class = sysfs_root / "class" / "accel"
    if accel_class.is_dir():
        for entry in sorted(accel_class.glob("accel*"), key=_numkey):
            numa = _read(entry / "device" / "numa_node")
            vendor = _read(entry / "device" / "vendor") or ""
            node = dev_root / "accel" / entry.name
            found.append(
                NpuInfo(
                    id=entry.name,
                    dev_path=str(node),
                    kind="accel",
                    numa_node=int(numa)
                    if numa and numa.lstrip("-").isdigit() and int(numa) >= 0
                    else None,
                    vendor=vendor,
                )
            )
    for prefix in _VENDOR_PATTERNS:
        for node in sorted(dev_root.glob(f"{prefix}*"), key=_numkey):
            if not _NUM.search(node.name) or node.is_dir():
                continue  # e.g. /dev/rbln_ctl or a directory: not a device instance
            found.append(NpuInfo(id=node.name, dev_path=str(node), kind=prefix))
    if found:
        return found
    raw = env.get(ENV_NPU_DEVICE_COUNT, "1")
    try:
        count = int(raw)
        if count < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{ENV_NPU_DEVICE_COUNT} must be a whole number >= 0, got {raw!r}"
        ) from None
    return [NpuInfo(id=f"npu-emu-{i}", dev_path=None, kind="emulated") for i in range(count)]


def _numkey(p: Path) -> tuple[str, int]:
    m = _NUM.search(p.name)
    return (p.name[: m.start()] if m else p.name, int(m.group(1)) if m else -1)


class NpuPlugin(DevicePluginServer):
    """Serves `keti.re.kr/npu`; health polls the device nodes."""

    resource_name = NPU_RESOURCE

    def __init__(
        self,
        npus: list[NpuInfo],
        plugin_dir: str | Path,
        *,
        endpoint: str = NPU_ENDPOINT,
        health_interval_s: float = 1.0,
        **server_kw: object,
    ) -> None:
        super().__init__(plugin_dir, endpoint, **server_kw)
        self.npus = npus
        self._by_id = {n.id: n for n in npus}
        self.health_interval_s = health_interval_s
        self._healthy = {n.id: self._present(n) for n in npus}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _present(n: NpuInfo) -> bool:
        return n.dev_path is None or os.path.exists(n.dev_path)

    def list_devices(self) -> list[pb.Device]:
        out = []
        for n in self.npus:
            topo = (
                pb.TopologyInfo(nodes=[pb.NUMANode(ID=n.numa_node)])
                if n.numa_node is not None
                else None
            )
            health = HEALTHY if self._healthy[n.id] else UNHEALTHY
            out.append(pb.Device(ID=n.id, health=health, topology=topo))
        return out

    def check_health(self) -> bool:
        """Re-read every device node; True (and a new list on the stream) when anything changed."""
        changed = False
        for n in self.npus:
            ok = self._present(n)
            if ok != self._healthy[n.id]:
                self._healthy[n.id] = ok
                changed = True
        if changed:
            self.devices_changed()
        return changed

    def _loop(self) -> None:
        while not self._halt.wait(self.health_interval_s):
            self.check_health()

    def on_start(self) -> None:
        self._halt.clear()
        self._thread = threading.Thread(target=self._loop, name="npu-health", daemon=True)
        self._thread.start()

    def on_stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def allocate(self, request: pb.AllocateRequest) -> pb.AllocateResponse:
        for creq in request.container_requests:  # check all first: a bad request changes nothing
            if not creq.devices_ids:
                raise PluginError(grpc.StatusCode.INVALID_ARGUMENT, "devices_ids is empty")
            unknown = [d for d in creq.devices_ids if d not in self._by_id]
            if unknown:
                raise PluginError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown NPU device IDs {unknown}; this node has {sorted(self._by_id)}",
                )
            sick = [d for d in creq.devices_ids if not self._healthy[d]]
            if sick:
                raise PluginError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"NPU(s) {sick} are Unhealthy"
                )
        responses = []
        for creq in request.container_requests:
            npus = [self._by_id[d] for d in creq.devices_ids]
            specs = [
                pb.DeviceSpec(container_path=n.dev_path, host_path=n.dev_path, permissions="rw")
                for n in npus
                if n.dev_path is not None
            ]
            ids = ",".join(n.id for n in npus)
            envs = {ENV_NPU_VISIBLE_DEVICES: ids}
            if all(n.kind == "rbln" for n in npus):
                envs[ENV_RBLN_DEVICES] = ",".join(_NUM.search(n.id).group(1) for n in npus)
            responses.append(
                pb.ContainerAllocateResponse(
                    envs=envs, devices=specs, annotations={ANNOTATION_NPUS: ids}
                )
            )
        return pb.AllocateResponse(container_responses=responses)
