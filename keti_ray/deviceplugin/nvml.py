"""GPU discovery, health and utilisation: through NVML, or simulated where there is none.

Both backends answer the same questions (`GpuBackend`), so the plugin, its health watcher and
the node agent's telemetry sampler never ask which one they hold.  NVML comes from
`nvidia-ml-py` (module `pynvml`, pure Python, loads libnvidia-ml.so at run time).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from keti_ray.podenv import simulated_gpu_uuid
from keti_ray.shares import device_sm_count

# XIDs that are the application's fault, not the GPU's (the same list NVIDIA's plugin skips):
# 13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing,
# 45 preemptive cleanup, 68 video processor exception, 109 context switch timeout.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


@dataclass(frozen=True)
class GpuInfo:
    """What the plugin needs to know about one GPU."""

    index: int
    uuid: str
    name: str
    sm_count: int
    memory_mib: int
    numa_node: int | None = None  # None where the platform does not say


@dataclass
class GpuUtilisation:
    """One utilisation sample of one GPU."""

    sm_pct: float
    memory_pct: float
    memory_used_mib: float
    processes: list[dict] = field(default_factory=list)  # {"pid", "sm_pct", "memory_pct"}


class GpuBackend(Protocol):
    """What the plugin and the agent ask of the GPUs."""

    simulated: bool

    def discover(self) -> list[GpuInfo]: ...

    def probe(self, uuid: str) -> bool:
        """True when the GPU answers a basic query (the periodic health probe)."""
        ...

    def wait_xid(self, timeout_s: float) -> list[tuple[str, int]]:
        """Block up to `timeout_s` for critical XID events; return (uuid, xid) pairs."""
        ...

    def utilisation(self, uuid: str) -> GpuUtilisation: ...

    def close(self) -> None: ...


class NvmlBackend:
    """The real GPUs, through NVML."""

    simulated = False

    def __init__(self) -> None:
        import pynvml  # imported here: only nodes with a driver need it

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._lock = threading.Lock()
        self._handles: dict[str, object] = {}
        self._events = None
        self._last_proc_ts: dict[str, int] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            self._handles[_text(pynvml.nvmlDeviceGetUUID(h))] = h

    def discover(self) -> list[GpuInfo]:
        nv = self._nvml
        out: list[GpuInfo] = []
        for uuid, h in self._handles.items():
            sms = _sm_count(nv, h)
            out.append(
                GpuInfo(
                    index=int(nv.nvmlDeviceGetIndex(h)),
                    uuid=uuid,
                    name=_text(nv.nvmlDeviceGetName(h)),
                    sm_count=sms,
                    memory_mib=int(nv.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)),
                    numa_node=_numa_node(nv, h),
                )
            )
        return sorted(out, key=lambda g: g.index)

    def probe(self, uuid: str) -> bool:
        """The GPU answers, and no memory repair waits for a GPU reset."""
        nv = self._nvml
        try:
            h = nv.nvmlDeviceGetHandleByUUID(uuid)
            nv.nvmlDeviceGetMemoryInfo(h)
            nv.nvmlDeviceGetUtilizationRates(h)
        except nv.NVMLError:
            return False
        try:  # row remapping (Ampere and newer): pending or failed -> needs a reset
            _, _, pending, failed = nv.nvmlDeviceGetRemappedRows(h)
            if pending or failed:
                return False
        except (nv.NVMLError, AttributeError):
            pass  # not supported on this GPU, or by these bindings
        try:  # page retirement (older GPUs): pending -> needs a reset
            if nv.nvmlDeviceGetRetiredPagesPendingStatus(h) == nv.NVML_FEATURE_ENABLED:
                return False
        except (nv.NVMLError, AttributeError):
            pass
        return True

    def wait_xid(self, timeout_s: float) -> list[tuple[str, int]]:
        nv = self._nvml
        with self._lock:
            if self._events is None:
                self._events = nv.nvmlEventSetCreate()
                for h in self._handles.values():
                    try:
                        nv.nvmlDeviceRegisterEvents(
                            h, nv.nvmlEventTypeXidCriticalError, self._events
                        )
                    except nv.NVMLError:
                        pass  # a GPU without event support is still probed periodically
        try:
            data = nv.nvmlEventSetWait(self._events, int(timeout_s * 1000))
        except nv.NVMLError_Timeout:
            return []
        except nv.NVMLError:
            time.sleep(timeout_s)
            return []
        xid = int(data.eventData)
        if xid in APPLICATION_XIDS:
            return []
        return [(_text(nv.nvmlDeviceGetUUID(data.device)), xid)]

    def utilisation(self, uuid: str) -> GpuUtilisation:
        nv = self._nvml
        h = nv.nvmlDeviceGetHandleByUUID(uuid)
        rates = nv.nvmlDeviceGetUtilizationRates(h)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        procs: list[dict] = []
        try:
            since = self._last_proc_ts.get(uuid, 0)
            samples = nv.nvmlDeviceGetProcessUtilization(h, since)
            for s in samples:
                procs.append(
                    {"pid": int(s.pid), "sm_pct": float(s.smUtil), "memory_pct": float(s.memUtil)}
                )
                self._last_proc_ts[uuid] = max(since, int(s.timeStamp))
        except (nv.NVMLError, AttributeError):
            pass  # no process samples since last time, or not supported
        try:  # memory per compute process (under MPS the clients appear here)
            by_pid = {p["pid"]: p for p in procs}
            for cp in nv.nvmlDeviceGetComputeRunningProcesses(h):
                used = cp.usedGpuMemory
                entry = by_pid.setdefault(int(cp.pid), {"pid": int(cp.pid)})
                entry["memory_used_mib"] = None if used is None else used / (1024 * 1024)
            procs = list(by_pid.values())
        except (nv.NVMLError, AttributeError):
            pass
        return GpuUtilisation(
            sm_pct=float(rates.gpu),
            memory_pct=100.0 * mem.used / max(mem.total, 1),
            memory_used_mib=mem.used / (1024 * 1024),
            processes=procs,
        )

    def close(self) -> None:
        nv = self._nvml
        if self._events is not None:
            try:
                nv.nvmlEventSetFree(self._events)
            except nv.NVMLError:
                pass
            self._events = None
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _sm_count(nv: object, h: object) -> int:
    """Multiprocessor count: NVML's device attributes where supported, else the data sheet."""
    try:
        return int(nv.nvmlDeviceGetAttributes(h).multiprocessorCount)
    except (nv.NVMLError, AttributeError):
        pass
    try:
        name = _text(nv.nvmlDeviceGetName(h))
    except nv.NVMLError:
        return 0
    return device_sm_count(name) or 0


def _numa_node(nv: object, h: object) -> int | None:
    """The GPU's NUMA node, from NVML where it knows, else from sysfs by PCI bus ID."""
    getter = getattr(nv, "nvmlDeviceGetNumaNodeId", None)
    if getter is not None:
        try:
            node = int(getter(h))
            return node if node >= 0 else None
        except nv.NVMLError:
            pass
    try:
        bus = _text(nv.nvmlDeviceGetPciInfo(h).busId).lower()
        # NVML gives an 8-digit domain (00000000:3B:00.0); sysfs uses 4 (0000:3b:00.0).
        if len(bus.split(":")[0]) == 8:
            bus = bus[4:]
        with open(f"/sys/bus/pci/devices/{bus}/numa_node") as f:
            node = int(f.read().strip())
        return node if node >= 0 else None
    except (OSError, ValueError, nv.NVMLError):
        return None


class SimulatedBackend:
    """N simulated GPUs (H100-like by default) for nodes without NVML and for tests.

    Health is driven by `fail()` / `recover()`; utilisation follows `set_load()` (the node
    agent sets it from the partition table, so simulated telemetry reflects allocations).
    """

    simulated = True

    def __init__(
        self,
        count: int,
        sm_count: int = 132,
        memory_mib: int = 81559,
        name: str = "Simulated H100",
        numa_nodes: int = 1,
        seed: str | None = None,
    ) -> None:
        if count < 0:
            raise ValueError(f"simulate count must be >= 0, got {count}")
        # the node name the Serve allocator's simulated cluster uses for the same GPUs
        node = seed or os.environ.get("NODE_NAME") or socket.gethostname()
        self._gpus = [
            GpuInfo(
                index=i,
                uuid=simulated_gpu_uuid(node, i),
                name=name,
                sm_count=sm_count,
                memory_mib=memory_mib,
                numa_node=(i * numa_nodes) // max(count, 1) if numa_nodes > 0 else None,
            )
            for i in range(count)
        ]
        self._failed: dict[str, int] = {}
        self._pending_xids: list[tuple[str, int]] = []
        self._load: dict[str, float] = {}
        self._cv = threading.Condition()

    def discover(self) -> list[GpuInfo]:
        return list(self._gpus)

    def fail(self, uuid: str, xid: int = 79) -> None:
        """Make a GPU fail: an XID event now, and the probe fails until `recover()`."""
        with self._cv:
            self._failed[uuid] = xid
            self._pending_xids.append((uuid, xid))
            self._cv.notify_all()

    def recover(self, uuid: str) -> None:
        with self._cv:
            self._failed.pop(uuid, None)

    def probe(self, uuid: str) -> bool:
        with self._cv:
            return uuid not in self._failed

    def wait_xid(self, timeout_s: float) -> list[tuple[str, int]]:
        with self._cv:
            if not self._pending_xids:
                self._cv.wait(timeout_s)
            out, self._pending_xids = self._pending_xids, []
        return [(u, x) for u, x in out if x not in APPLICATION_XIDS]

    def set_load(self, uuid: str, pct: float) -> None:
        self._load[uuid] = max(0.0, min(100.0, pct))

    def utilisation(self, uuid: str) -> GpuUtilisation:
        gpu = next(g for g in self._gpus if g.uuid == uuid)
        load = self._load.get(uuid, 0.0)
        return GpuUtilisation(
            sm_pct=load,
            memory_pct=load * 0.5,
            memory_used_mib=gpu.memory_mib * load * 0.005,
        )

    def close(self) -> None:
        with self._cv:
            self._cv.notify_all()


def open_backend(simulate: int | None) -> GpuBackend:
    """NVML when `simulate` is None, else `simulate` simulated GPUs."""
    if simulate is not None:
        return SimulatedBackend(simulate)
    return NvmlBackend()
