"""The GPU plugin: `keti.re.kr/gpu-pct`, 100 SM-percent units per GPU, one device ID per unit.

A request of 1-100 units is served from ONE GPU and becomes the shim's `BLESS_LIMIT_PCT`; a
request above 100 takes whole GPUs.  GetPreferredAllocation picks the GPU (FGD locally);
Allocate checks the IDs and answers with the shim's environment and mounts.  Health comes
from NVML XID events and a periodic probe, and a GPU that answers again is made Healthy again.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid as uuidlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from keti_ray.constants import (
    GPU_PLUGIN_SOCKET,
    GPU_RESOURCE,
    GPU_UNITS_PER_DEVICE,
    MPS_PIPE_DIR,
    SHIM_CONTAINER_PATH,
    SHIM_HOST_DIR,
    SHIM_LIBRARY_NAME,
    VAI_STATUS_HOST_DIR,
)
from keti_ray.deviceplugin import allocations as records
from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.deviceplugin.allocations import GpuAllocation
from keti_ray.deviceplugin.nvml import GpuBackend, GpuInfo
from keti_ray.deviceplugin.preferred import Chooser, make_chooser
from keti_ray.deviceplugin.server import HEALTHY, UNHEALTHY, DevicePluginServer, PluginError
from keti_ray.deviceplugin.units import device_id, parse_device_id
from keti_ray.podenv import CONTAINER_STATUS_DIR, gpu_pod_env

log = logging.getLogger(__name__)

GPU_ENDPOINT = GPU_PLUGIN_SOCKET
SHIM_HOST_PATH = f"{SHIM_HOST_DIR}/{SHIM_LIBRARY_NAME}"  # where the DaemonSet installs the shim
ANNOTATION_UUIDS = "keti.re.kr/gpu-uuids"
ANNOTATION_UNITS = "keti.re.kr/gpu-pct"
ANNOTATION_ALLOCATION = "keti.re.kr/allocation-id"
_MEMORY_RE = re.compile(r"^([1-9]\d*)(Ki|Mi|Gi|Ti)$")
_MIB_PER = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


@dataclass
class _Health:
    healthy: bool = True
    ok_streak: int = 0
    reason: str = ""


def validate_memory_limit(memory_limit: str) -> str:
    """'proportional', 'none', or a quantity like '20Gi' / '512Mi'; ValueError otherwise."""
    if memory_limit in ("proportional", "none") or _MEMORY_RE.match(memory_limit):
        return memory_limit
    raise ValueError(
        f"memory_limit must be 'proportional', 'none' or a quantity like '20Gi' or '512Mi', "
        f"got {memory_limit!r}"
    )


class GpuPlugin(DevicePluginServer):
    """Serves `keti.re.kr/gpu-pct` for the GPUs a backend reports."""

    resource_name = GPU_RESOURCE
    preferred_allocation_available = True

    def __init__(
        self,
        backend: GpuBackend,
        plugin_dir: str | Path,
        *,
        endpoint: str = GPU_ENDPOINT,
        chooser: Chooser | None = None,
        memory_limit: str = "proportional",
        shim_host_path: str = SHIM_HOST_PATH,
        mps_pipe_dir: str = MPS_PIPE_DIR,
        status_host_dir: str = VAI_STATUS_HOST_DIR,
        probe_interval_s: float = 5.0,
        recovery_probes: int = 3,
        on_allocate: Callable[[GpuAllocation], None] | None = None,
        only_uuids: Sequence[str] | None = None,
        **server_kw: object,
    ) -> None:
        super().__init__(plugin_dir, endpoint, **server_kw)
        self.backend = backend
        found = backend.discover()
        if only_uuids:  # GPU_UUID: serve just these GPUs of the node
            missing = sorted(set(only_uuids) - {g.uuid for g in found})
            if missing:
                raise ValueError(
                    f"GPU_UUID names {missing}, which this node does not have; it has "
                    f"{[g.uuid for g in found]}"
                )
            found = [g for g in found if g.uuid in set(only_uuids)]
        self.gpus: list[GpuInfo] = found
        self._by_uuid = {g.uuid: g for g in self.gpus}
        # every device ID -> its GPU, so checking 800 IDs is 800 dict lookups
        self._id_gpu = {
            device_id(g.uuid, u): g.uuid for g in self.gpus for u in range(GPU_UNITS_PER_DEVICE)
        }
        for g in self.gpus:
            device_id(g.uuid, GPU_UNITS_PER_DEVICE - 1)  # fail early if the IDs would be too long
        if chooser is None:
            chooser, self.chooser_name = make_chooser(found[0].name if found else "")
        else:
            self.chooser_name = getattr(chooser, "__name__", type(chooser).__name__)
        self.chooser: Chooser = chooser
        self.memory_limit = validate_memory_limit(memory_limit)
        self.shim_host_path = shim_host_path
        self.mps_pipe_dir = mps_pipe_dir
        self.status_host_dir = Path(status_host_dir)
        self.probe_interval_s = probe_interval_s
        self.recovery_probes = recovery_probes
        self.on_allocate = on_allocate
        self._health = {g.uuid: _Health() for g in self.gpus}
        self._health_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._halt = threading.Event()
        # what this node handed out, recovered from the status directory after a restart
        known = set(self._by_uuid)
        self.allocations: dict[str, GpuAllocation] = {
            a: rec
            for a, rec in records.load_all(self.status_host_dir).items()
            if set(rec.gpu_uuids) <= known
        }
        self._alloc_lock = threading.Lock()

    # ----- devices and health ------------------------------------------------------------
    def list_devices(self) -> list[pb.Device]:
        out: list[pb.Device] = []
        with self._health_lock:
            states = {u: h.healthy for u, h in self._health.items()}
        for g in self.gpus:
            health = HEALTHY if states[g.uuid] else UNHEALTHY
            topo = (
                pb.TopologyInfo(nodes=[pb.NUMANode(ID=g.numa_node)])
                if g.numa_node is not None
                else None
            )
            for unit in range(GPU_UNITS_PER_DEVICE):
                out.append(pb.Device(ID=device_id(g.uuid, unit), health=health, topology=topo))
        return out

    def gpu_healthy(self, uuid: str) -> bool:
        with self._health_lock:
            return self._health[uuid].healthy

    def _set_health(self, uuid: str, healthy: bool, reason: str) -> None:
        with self._health_lock:
            h = self._health.get(uuid)
            if h is None or h.healthy == healthy:
                return
            h.healthy = healthy
            h.reason = reason
        log.warning("GPU %s -> %s (%s)", uuid, HEALTHY if healthy else UNHEALTHY, reason)
        self.devices_changed()

    def _xid_loop(self) -> None:
        while not self._halt.is_set():
            try:
                events = self.backend.wait_xid(0.5)
            except Exception:  # the watcher must outlive a broken event API; probes go on
                log.exception("XID wait failed; XID events not watched for 5 s")
                self._halt.wait(5.0)
                continue
            for uuid, xid in events:
                with self._health_lock:
                    if uuid in self._health:
                        self._health[uuid].ok_streak = 0
                self._set_health(uuid, False, f"XID {xid}")

    def _probe_loop(self) -> None:
        while not self._halt.wait(self.probe_interval_s):
            for g in self.gpus:
                try:
                    ok = self.backend.probe(g.uuid)
                except Exception:  # a probe that cannot run cannot vouch for the GPU
                    log.exception("health probe of %s raised", g.uuid)
                    ok = False
                with self._health_lock:
                    h = self._health[g.uuid]
                    h.ok_streak = h.ok_streak + 1 if ok else 0
                    recovered = ok and not h.healthy and h.ok_streak >= self.recovery_probes
                if not ok:
                    self._set_health(g.uuid, False, "probe failed")
                elif recovered:
                    self._set_health(g.uuid, True, f"{self.recovery_probes} probes passed")

    def on_start(self) -> None:
        self._halt.clear()
        for target in (self._xid_loop, self._probe_loop):
            t = threading.Thread(target=target, name=f"gpu-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def on_stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(timeout=3)
        self._threads.clear()

    # ----- GetPreferredAllocation ------------------------------------------------------------
    def _group(self, ids: Sequence[str], what: str) -> dict[str, list[str]]:
        """Device IDs -> {gpu uuid: ids}, in GPU order; PluginError on an unknown or bad ID."""
        groups: dict[str, list[str]] = defaultdict(list)
        id_gpu = self._id_gpu
        for dev in ids:
            uuid = id_gpu.get(dev)
            if uuid is None:  # not one of ours: say why, in the accepted form
                try:
                    uuid, _ = parse_device_id(dev)
                except ValueError as e:
                    raise PluginError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {e}") from None
                raise PluginError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what}: device ID {dev!r} names GPU {uuid!r}, which this node does not have",
                )
            groups[uuid].append(dev)
        return {g.uuid: groups[g.uuid] for g in self.gpus if g.uuid in groups}  # GPU order

    def preferred_allocation(
        self, request: pb.PreferredAllocationRequest
    ) -> pb.PreferredAllocationResponse:
        self._prune(request)
        answers = []
        for creq in request.container_requests:
            answers.append(
                self._prefer(
                    list(creq.available_deviceIDs),
                    list(creq.must_include_deviceIDs),
                    creq.allocation_size,
                )
            )
        return pb.PreferredAllocationResponse(
            container_responses=[
                pb.ContainerPreferredAllocationResponse(deviceIDs=a) for a in answers
            ]
        )

    def _prune(self, request: pb.PreferredAllocationRequest) -> None:
        """Forget allocations whose units kubelet now offers as available (the pod ended)."""
        available: set[str] = set()
        for creq in request.container_requests:
            available.update(creq.available_deviceIDs)
        with self._alloc_lock:
            ended = [a for a, v in self.allocations.items() if v.device_ids <= available]
            for aid in ended:
                del self.allocations[aid]
        for aid in ended:
            records.remove(self.status_host_dir, aid)

    def _prefer(self, available: list[str], must: list[str], size: int) -> list[str]:
        per = GPU_UNITS_PER_DEVICE
        if size <= 0:
            raise PluginError(
                grpc.StatusCode.INVALID_ARGUMENT, f"allocation_size must be >= 1, got {size}"
            )
        avail = self._group(available, "available_deviceIDs")
        must_groups = self._group(must, "must_include_deviceIDs")
        healthy = {g.uuid for g in self.gpus if self.gpu_healthy(g.uuid)}
        if size <= per:
            if len(must_groups) > 1:
                raise PluginError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"must_include_deviceIDs span {len(must_groups)} GPUs; a request of "
                    f"{size} <= {per} units must come from one GPU",
                )
            if must_groups:
                chosen_uuid = next(iter(must_groups))
                if len(set(avail.get(chosen_uuid, [])) | set(must)) < size:
                    raise PluginError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"GPU {chosen_uuid} (from must_include_deviceIDs) has fewer than "
                        f"{size} available units",
                    )
            else:
                free = [len(avail.get(g.uuid, [])) if g.uuid in healthy else -1 for g in self.gpus]
                idx = self.chooser(free, size)
                if idx is None:
                    raise PluginError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"no single GPU has {size} free units (free units per GPU: {free})",
                    )
                chosen_uuid = self.gpus[idx].uuid
            must_set = set(must)
            rest = sorted(d for d in avail.get(chosen_uuid, []) if d not in must_set)
            return list(must) + rest[: size - len(must)]
        if size % per:
            raise PluginError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"allocation_size {size} > {per} must be a multiple of {per} (whole GPUs)",
            )
        need = size // per
        whole = [u for u, ids in avail.items() if len(ids) == per and u in healthy]
        first = [u for u in must_groups if u in whole]
        if len(first) != len(must_groups):
            raise PluginError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "must_include_deviceIDs name a GPU that is not wholly free",
            )
        # prefer GPUs on the NUMA node(s) of the must-include GPUs, then by NUMA node, index
        numa_pref = {self._by_uuid[u].numa_node for u in first}
        others = sorted(
            (u for u in whole if u not in first),
            key=lambda u: (
                self._by_uuid[u].numa_node not in numa_pref,
                self._by_uuid[u].numa_node if self._by_uuid[u].numa_node is not None else -1,
                self._by_uuid[u].index,
            ),
        )
        picked = (first + others)[:need]
        if len(picked) < need:
            raise PluginError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{size} units need {need} wholly free GPUs; only {len(whole)} are",
            )
        return [d for u in picked for d in sorted(avail[u])]

    # ----- Allocate ------------------------------------------------------------------------
    def _check(self, ids: Sequence[str]) -> tuple[dict[str, list[str]], int]:
        per = GPU_UNITS_PER_DEVICE
        if not ids:
            raise PluginError(grpc.StatusCode.INVALID_ARGUMENT, "devices_ids is empty")
        dupes = sorted(d for d, n in Counter(ids).items() if n > 1)
        if dupes:
            raise PluginError(grpc.StatusCode.INVALID_ARGUMENT, f"devices_ids repeats {dupes[:3]}")
        groups = self._group(ids, "devices_ids")
        units = len(ids)
        if units <= per and len(groups) > 1:
            parts = ", ".join(f"{u} ({len(v)} units)" for u, v in groups.items())
            raise PluginError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"devices_ids straddle {len(groups)} GPUs: {parts}; a request of "
                f"{units} <= {per} units must come from one GPU",
            )
        if units > per:
            partial = {u: len(v) for u, v in groups.items() if len(v) != per}
            if units % per or partial:
                raise PluginError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a request of {units} > {per} units must be whole GPUs ({per} units "
                    f"each); got partial GPUs {partial}",
                )
        sick = [u for u in groups if not self.gpu_healthy(u)]
        if sick:
            raise PluginError(grpc.StatusCode.FAILED_PRECONDITION, f"GPU(s) {sick} are Unhealthy")
        return groups, units

    def _memory_mib_for(self, gpu: GpuInfo, units: int) -> int | None:
        """VAI_MEMORY_LIMIT in MiB for a share of `units` of `gpu` (None: no quota)."""
        if units >= GPU_UNITS_PER_DEVICE or self.memory_limit == "none":
            return None
        if self.memory_limit == "proportional":
            return gpu.memory_mib * units // GPU_UNITS_PER_DEVICE
        number, unit = _MEMORY_RE.match(self.memory_limit).groups()
        return max(1, int(int(number) * _MIB_PER[unit]))

    def allocate(self, request: pb.AllocateRequest) -> pb.AllocateResponse:
        # Check every container first: an invalid request changes nothing.
        checked = [self._check(list(c.devices_ids)) for c in request.container_requests]
        responses = []
        for (groups, units), creq in zip(checked, request.container_requests, strict=True):
            uuids = tuple(groups)
            bless = units if units < GPU_UNITS_PER_DEVICE else None
            mem_mib = self._memory_mib_for(self._by_uuid[uuids[0]], units)
            mem = None if mem_mib is None else f"{mem_mib}Mi"
            alloc_id = uuidlib.uuid4().hex[:12]
            record = GpuAllocation(
                allocation_id=alloc_id,
                gpu_uuids=uuids,
                units=units,
                device_ids=frozenset(creq.devices_ids),
                bless_limit_pct=bless,
                memory_limit=mem,
            )
            status_host = records.save(self.status_host_dir, record)
            # the same env the Serve allocator reports for a placement (keti_ray.podenv)
            envs = gpu_pod_env(
                uuids,
                min(units, GPU_UNITS_PER_DEVICE),
                memory_limit_mib=mem_mib,
                shim_path=SHIM_CONTAINER_PATH,
                mps_pipe_dir=MPS_PIPE_DIR,
                status_dir=CONTAINER_STATUS_DIR,
            )
            mounts = [
                pb.Mount(
                    container_path=SHIM_CONTAINER_PATH,
                    host_path=self.shim_host_path,
                    read_only=True,
                ),
                pb.Mount(container_path=MPS_PIPE_DIR, host_path=self.mps_pipe_dir, read_only=False),
                pb.Mount(
                    container_path=CONTAINER_STATUS_DIR, host_path=str(status_host), read_only=False
                ),
            ]
            annotations = {
                ANNOTATION_UUIDS: ",".join(uuids),
                ANNOTATION_UNITS: str(units),
                ANNOTATION_ALLOCATION: alloc_id,
            }
            responses.append(
                pb.ContainerAllocateResponse(envs=envs, mounts=mounts, annotations=annotations)
            )
            with self._alloc_lock:
                replaced = [
                    a for a, v in self.allocations.items() if v.device_ids & record.device_ids
                ]
                for old in replaced:
                    del self.allocations[old]  # those units were freed and handed out again
                self.allocations[alloc_id] = record
            for old in replaced:
                records.remove(self.status_host_dir, old)
            if self.on_allocate is not None:
                self.on_allocate(record)
        return pb.AllocateResponse(container_responses=responses)
