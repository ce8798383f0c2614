"""The GPU plugin: `keti.re.kr/gpu-pct`, 100 SM-percent units per GPU, one device ID per unit.

A request of 1-100 units is served from ONE GPU and becomes the shim's `BLESS_LIMIT_PCT`; a
request above 100 takes whole GPUs.  The GPU is the allocator's decision (the pod's
`keti.re.kr/allocation` annotation, found through the API server: `decisions.py`);
GetPreferredAllocation's local FGD choice is only the fallback where no decision exists, and
every fallback is counted and logged.  Allocate checks the IDs against the decision and
answers with the shim's env, its limits file and the read-only `/etc/ld.so.preload`; an MPS
share also gets the MPS pipe directory (read-only by default) and the server's /dev/shm
(`mpsmounts.py`), a whole GPU or a green-context share neither.  Health
comes from NVML XID events (fatal ones hold until a reset, `health.py`) and a periodic probe;
records are reconciled against kubelet's PodResources API.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuidlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as MetricCounter

from keti_ray.constants import (
    ANN_ALLOCATION,
    GPU_PLUGIN_SOCKET,
    GPU_RESOURCE,
    GPU_UNITS_PER_DEVICE,
    LD_SO_PRELOAD_CONTAINER_PATH,
    LIMITS_CONTAINER_PATH,
    LIMITS_HOST_DIR,
    MPS_PIPE_DIR,
    MPS_PIPE_HOST_DIR,
    MPS_SHM_HOST_DIR,
    SHIM_CONTAINER_PATH,
    SHIM_HOST_DIR,
    SHIM_LIBRARY_NAME,
    VAI_STATUS_HOST_DIR,
)
from keti_ray.deviceplugin import allocations as records
from keti_ray.deviceplugin import health as fatal
from keti_ray.deviceplugin import limits as limitsfile
from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.deviceplugin.allocations import GpuAllocation
from keti_ray.deviceplugin.decisions import Decision, DecisionError, DecisionFinder
from keti_ray.deviceplugin.mpsmounts import is_mps_tenant, mps_mounts, validate_mps_mounts
from keti_ray.deviceplugin.nvml import GpuBackend, GpuInfo
from keti_ray.deviceplugin.podresources import PodResourcesClient
from keti_ray.deviceplugin.preferred import Chooser, make_chooser
from keti_ray.deviceplugin.server import HEALTHY, UNHEALTHY, DevicePluginServer, PluginError
from keti_ray.deviceplugin.units import device_id, parse_device_id
from keti_ray.podenv import CONTAINER_STATUS_DIR, gpu_pod_env
from keti_ray.quantity import memory_mib
from keti_ray.shares import (
    MILLI_PER_GPU,
    device_sm_count,
    limit_pct,
    limit_pct_for_units,
    units_to_milli,
)

log = logging.getLogger(__name__)

GPU_ENDPOINT = GPU_PLUGIN_SOCKET
SHIM_HOST_PATH = f"{SHIM_HOST_DIR}/{SHIM_LIBRARY_NAME}"  # where the DaemonSet installs the shim
ANNOTATION_UUIDS = "keti.re.kr/gpu-uuids"
ANNOTATION_UNITS = "keti.re.kr/gpu-pct"
ANNOTATION_ALLOCATION = "keti.re.kr/allocation-id"
RECONCILE_GRACE_S = 30.0  # a record this young may not be in PodResources yet
PREFERRED_CACHE_S = 10.0  # how long GetPreferredAllocation's decision waits for its Allocate


@dataclass
class _Health:
    healthy: bool = True
    ok_streak: int = 0
    reason: str = ""
    fatal: fatal.FatalRecord | None = None  # held Unhealthy until a reset is seen


def validate_memory_limit(memory_limit: str) -> str:
    """'proportional', 'none', or a memory quantity like '20Gi'; ValueError otherwise."""
    if memory_limit in ("proportional", "none"):
        return memory_limit
    try:
        memory_mib(memory_limit, "memory_limit")
    except ValueError:
        raise ValueError(
            f"memory_limit must be 'proportional', 'none' or a quantity like '20Gi' or "
            f"'512Mi', got {memory_limit!r}"
        ) from None
    return memory_limit


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
        mps_pipe_dir: str = MPS_PIPE_HOST_DIR,
        mps_shm_host_dir: str = MPS_SHM_HOST_DIR,
        mps_mounts: str = "ro",
        status_host_dir: str = VAI_STATUS_HOST_DIR,
        limits_host_dir: str = LIMITS_HOST_DIR,
        probe_interval_s: float = 5.0,
        recovery_probes: int = 3,
        on_allocate: Callable[[GpuAllocation], None] | None = None,
        only_uuids: Sequence[str] | None = None,
        decisions: DecisionFinder | None = None,
        pod_resources: PodResourcesClient | None = None,
        reconcile_interval_s: float = 30.0,
        mechanism: str | None = None,
        registry: CollectorRegistry | None = None,
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
        self.mps_pipe_dir = mps_pipe_dir  # on the host
        self.mps_shm_host_dir = mps_shm_host_dir
        self.mps_mounts = validate_mps_mounts(mps_mounts)  # MPS tenants' pipe: ro, rw, none
        self.status_host_dir = Path(status_host_dir)
        self.probe_interval_s = probe_interval_s
        self.recovery_probes = recovery_probes
        self.on_allocate = on_allocate
        self.limits_host_dir = Path(limits_host_dir)
        self.ld_so_preload_host = limitsfile.write_ld_so_preload(self.limits_host_dir)
        self.mechanism = mechanism
        limitsfile.Limits(None, None, None, mechanism)  # fail early on a bad mechanism
        self.decisions = decisions
        self.pod_resources = pod_resources
        self.reconcile_interval_s = reconcile_interval_s
        self._preferred: dict[frozenset[str], tuple[float, Decision]] = {}
        # per plugin unless given (the node agent's, so one /metrics serves both)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.fallbacks = Counter()  # (call, reason) -> count, as the metric counts them
        self._m_fallback = MetricCounter(
            "keti_plugin_decision_fallbacks",
            "GPU chosen by the plugin's local FGD because no allocator decision applied",
            ["call", "reason"],
            registry=self.registry,
        )
        self._m_decided = MetricCounter(
            "keti_plugin_decisions_honoured",
            "GPU taken from the pod's keti.re.kr/allocation annotation",
            ["call"],
            registry=self.registry,
        )
        self._m_relists = MetricCounter(
            "keti_plugin_decision_relists",
            "lookups the pod watch could not answer, asked again with a fresh LIST",
            registry=self.registry,
        )
        self._m_reconciled = MetricCounter(
            "keti_plugin_records_reconciled",
            "allocation records dropped because PodResources no longer lists their devices",
            registry=self.registry,
        )
        self._health = {g.uuid: _Health() for g in self.gpus}
        for g in self.gpus:  # a fatal XID seen before a plugin restart still holds
            rec = fatal.load_fatal(self.status_host_dir, g.uuid)
            if rec is not None and rec.reset_token == backend.reset_token(g.uuid):
                self._health[g.uuid] = _Health(False, 0, f"XID {rec.xid} (fatal)", rec)
            elif rec is not None:
                fatal.clear_fatal(self.status_host_dir, g.uuid)
                log.warning("GPU %s: reset seen since fatal XID %d", g.uuid, rec.xid)
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
                self.on_xid(uuid, xid)

    def on_xid(self, uuid: str, xid: int) -> None:
        """A critical XID: fatal ones quarantine the GPU until a reset, others until probes pass."""
        if uuid not in self._health:
            return
        if xid in fatal.APPLICATION_XIDS:
            return
        rec = None
        if fatal.is_fatal(xid):
            rec = fatal.FatalRecord(uuid, xid, time.time(), self.backend.reset_token(uuid))
            fatal.save_fatal(self.status_host_dir, rec)
        with self._health_lock:
            h = self._health[uuid]
            h.ok_streak = 0
            if rec is not None:
                h.fatal = rec
        self._set_health(uuid, False, f"XID {xid}" + (" (fatal: reset needed)" if rec else ""))

    def _reset_seen(self, uuid: str, rec: fatal.FatalRecord) -> bool:
        """The backend's reset token moved, or an operator removed the state file."""
        try:
            if self.backend.reset_token(uuid) != rec.reset_token:
                return True
        except Exception:
            log.exception("reset token of %s unreadable", uuid)
        return fatal.load_fatal(self.status_host_dir, uuid) is None

    def probe_once(self) -> None:
        """One round of health probes (the probe loop's body)."""
        for g in self.gpus:
            with self._health_lock:
                rec = self._health[g.uuid].fatal
            if rec is not None:
                if not self._reset_seen(g.uuid, rec):
                    continue  # quarantined: no probe can vouch for it
                fatal.clear_fatal(self.status_host_dir, g.uuid)
                log.warning("GPU %s: reset seen after fatal XID %d; probing again", g.uuid, rec.xid)
                with self._health_lock:
                    self._health[g.uuid].fatal = None
                    self._health[g.uuid].ok_streak = 0
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

    def _probe_loop(self) -> None:
        while not self._halt.wait(self.probe_interval_s):
            self.probe_once()

    def health_state(self) -> dict[str, dict[str, object]]:
        """Per GPU: healthy, reason, and the fatal XID holding it (for info and tests)."""
        with self._health_lock:
            return {
                u: {
                    "healthy": h.healthy,
                    "reason": h.reason,
                    "fatal_xid": h.fatal.xid if h.fatal else None,
                }
                for u, h in self._health.items()
            }

    def _reconcile_loop(self) -> None:
        while not self._halt.wait(self.reconcile_interval_s):
            try:
                self.reconcile()
            except Exception as e:  # kubelet restarting: try again next round
                log.warning("PodResources reconcile failed: %s", e)

    def on_start(self) -> None:
        self._halt.clear()
        loops = [self._xid_loop, self._probe_loop]
        if self.pod_resources is not None:
            loops.append(self._reconcile_loop)
        for target in loops:
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
        self._forget(ended)

    def _forget(self, ended: Sequence[str]) -> None:
        """Drop ended allocations: record, status directory and limits file."""
        with self._alloc_lock:
            for aid in ended:
                self.allocations.pop(aid, None)
        for aid in ended:
            records.remove(self.status_host_dir, aid)
            limitsfile.remove(self.limits_host_dir, aid)

    def reconcile(self, now: float | None = None) -> dict[str, list[str]]:
        """Records against kubelet's PodResources `List`: a record none of whose device IDs a
        live container holds (and older than the grace period) ended; a held one learns its pod.
        Covers Unhealthy GPUs, whose units kubelet never offers again.  Limits directories
        without a record go too."""
        if self.pod_resources is None:
            return {"ended": [], "named": []}
        now = time.time() if now is None else now
        holdings = self.pod_resources.holdings(self.resource_name)
        owner = {i: h for h in holdings for i in h.device_ids}
        ended, named = [], []
        with self._alloc_lock:
            for aid, rec in self.allocations.items():
                held = [owner[i] for i in rec.device_ids if i in owner]
                if held:
                    if rec.pod is None:
                        rec.pod, rec.container = held[0].pod_key, held[0].container
                        records.save(self.status_host_dir, rec)
                        named.append(aid)
                elif now - rec.created_at > RECONCILE_GRACE_S:
                    ended.append(aid)
            known = set(self.allocations)
        self._forget(ended)
        for aid in limitsfile.existing(self.limits_host_dir) - known - set(ended):
            limitsfile.remove(self.limits_host_dir, aid)
        if ended:
            self._m_reconciled.inc(len(ended))
            log.info("reconciled %d ended allocation(s) from PodResources: %s", len(ended), ended)
        return {"ended": ended, "named": named}

    # ----- the allocator's decision ----------------------------------------------------------
    def _held_containers(self) -> set[tuple[str, str]]:
        """(pod key, container) pairs that already hold units: PodResources plus our records."""
        with self._alloc_lock:
            out = {(r.pod, r.container) for r in self.allocations.values() if r.pod}
        if self.pod_resources is not None:
            try:
                out |= {
                    (h.pod_key, h.container)
                    for h in self.pod_resources.holdings(self.resource_name)
                }
            except grpc.RpcError as e:
                log.warning(
                    "PodResources List failed (%s); using the plugin's records only", e.code()
                )
        return out

    def _count_fallback(self, call: str, reason: str, size: int) -> None:
        self.fallbacks[(call, reason)] += 1
        self._m_fallback.labels(call, reason).inc()
        log.warning(
            "%s for %d units: no allocator decision (%s); the plugin chooses the GPU locally (%s)",
            call, size, reason, self.chooser_name,
        )  # fmt: skip

    def _decision_for(self, size: int, call: str) -> Decision | None:
        """The decision for the container being admitted, or None (fallback counted)."""
        if self.decisions is None:
            self._count_fallback(call, "no-apiserver", size)
            return None
        before = getattr(self.decisions, "refreshes", 0)
        try:
            d = self.decisions.find(size)
        except DecisionError as e:
            log.warning("%s", e)
            self._count_fallback(call, "apiserver-error", size)
            return None
        finally:
            if getattr(self.decisions, "refreshes", 0) > before:
                self._m_relists.inc()
        if d is None:
            self._count_fallback(call, "no-decision", size)
            return None
        self._m_decided.labels(call).inc()
        return d

    def _check_decided_share(self, d: Decision, size: int) -> None:
        """The share is decided once too: served as booked, which is at least what is asked
        (the allocator may round a small request up to the smallest share of its GPUs)."""
        per = GPU_UNITS_PER_DEVICE
        whole = size >= per
        if whole != (d.milli == MILLI_PER_GPU) or (not whole and d.milli < units_to_milli(size)):
            raise PluginError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pod {d.pod_key} container {d.container}: {ANN_ALLOCATION} books "
                f"{d.milli} milli but the container asks for {size} units "
                f"({units_to_milli(size)} milli{'' if not whole else ', whole GPUs'})",
            )

    def _decided_ids(
        self, d: Decision, avail: dict[str, list[str]], must: list[str], size: int
    ) -> list[str]:
        """Device IDs on the decision's GPU(s) for `size` units; PluginError naming both sides."""
        per = GPU_UNITS_PER_DEVICE
        unknown = [u for u in d.gpus if u not in self._by_uuid]
        if unknown:
            raise PluginError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pod {d.pod_key} container {d.container}: {ANN_ALLOCATION} names GPU(s) "
                f"{unknown}, which this node does not have (it has {list(self._by_uuid)})",
            )
        self._check_decided_share(d, size)
        need = 1 if size <= per else size // per
        if len(d.gpus) != need:
            raise PluginError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pod {d.pod_key} container {d.container}: {ANN_ALLOCATION} names "
                f"{len(d.gpus)} GPU(s) {list(d.gpus)} for a request of {size} units "
                f"({need} needed)",
            )
        must_set = set(must)
        out = list(must)
        for u in d.gpus:
            take = size if size <= per else per
            have = [i for i in sorted(avail.get(u, [])) if i not in must_set]
            mine = [i for i in must if self._id_gpu.get(i) == u]
            if len(have) + len(mine) < take:
                free = {g: len(v) for g, v in avail.items()}
                raise PluginError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"pod {d.pod_key} container {d.container}: {ANN_ALLOCATION} names GPU {u}, "
                    f"but kubelet offers only {len(have) + len(mine)} of its units for "
                    f"{take} (offered units per GPU: {free})",
                )
            out += have[: take - len(mine)]
        return out

    def _prefer(self, available: list[str], must: list[str], size: int) -> list[str]:
        per = GPU_UNITS_PER_DEVICE
        if size <= 0:
            raise PluginError(
                grpc.StatusCode.INVALID_ARGUMENT, f"allocation_size must be >= 1, got {size}"
            )
        avail = self._group(available, "available_deviceIDs")
        must_groups = self._group(must, "must_include_deviceIDs")
        if size <= per or size % per == 0:
            d = self._decision_for(size, "GetPreferredAllocation")
            if d is not None:
                ids = self._decided_ids(d, avail, must, size)
                now = time.monotonic()
                with self._alloc_lock:
                    self._preferred = {
                        k: v for k, v in self._preferred.items() if now - v[0] < PREFERRED_CACHE_S
                    }
                    self._preferred[frozenset(ids)] = (now, d)
                return ids
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
        return memory_mib(self.memory_limit, "memory_limit")

    def _device_sms(self, gpu: GpuInfo) -> int | None:
        """The GPU's SM count: NVML's, else the data sheet by name (None: unknown)."""
        return gpu.sm_count or device_sm_count(gpu.name)

    def _decision_for_allocate(
        self, ids: Sequence[str], groups: dict[str, list[str]], units: int
    ) -> Decision | None:
        """The decision these IDs serve: the one GetPreferredAllocation answered with, else a
        fresh lookup; an Allocate on other GPUs than decided is refused, naming both."""
        key = frozenset(ids)
        with self._alloc_lock:
            hit = self._preferred.pop(key, None)
        if hit is not None and time.monotonic() - hit[0] < PREFERRED_CACHE_S:
            self._m_decided.labels("Allocate").inc()
            return hit[1]
        d = self._decision_for(units, "Allocate")
        if d is not None:
            self._check_decided_share(d, units)
        if d is not None and set(d.gpus) != set(groups):
            raise PluginError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pod {d.pod_key} container {d.container}: {ANN_ALLOCATION} names GPU(s) "
                f"{sorted(d.gpus)} but kubelet offers devices on GPU(s) {sorted(groups)}",
            )
        return d

    def allocate(self, request: pb.AllocateRequest) -> pb.AllocateResponse:
        # Check every container first: an invalid request changes nothing.
        checked = [self._check(list(c.devices_ids)) for c in request.container_requests]
        decided = [
            self._decision_for_allocate(list(c.devices_ids), groups, units)
            for (groups, units), c in zip(checked, request.container_requests, strict=True)
        ]
        responses = []
        for (groups, units), creq, decision in zip(
            checked, request.container_requests, decided, strict=True
        ):
            responses.append(self._allocate_one(groups, units, creq, decision))
        return pb.AllocateResponse(container_responses=responses)

    def _allocate_one(
        self,
        groups: dict[str, list[str]],
        units: int,
        creq: pb.ContainerAllocateRequest,
        decision: Decision | None,
    ) -> pb.ContainerAllocateResponse:
        uuids = tuple(groups)
        gpu = self._by_uuid[uuids[0]]
        share_units = min(units, GPU_UNITS_PER_DEVICE)
        sms = self._device_sms(gpu)
        if decision is not None:  # the decided share (booked >= asked, checked above)
            bless = limit_pct(decision.milli)
        else:  # the same rule the allocator books by, on this GPU (its smallest share)
            bless = limit_pct_for_units(share_units, sms)
        served = bless if bless is not None else GPU_UNITS_PER_DEVICE
        mem_mib = self._memory_mib_for(gpu, served if units <= GPU_UNITS_PER_DEVICE else units)
        alloc_id = uuidlib.uuid4().hex[:12]
        record = GpuAllocation(
            allocation_id=alloc_id,
            gpu_uuids=uuids,
            units=units,
            device_ids=frozenset(creq.devices_ids),
            bless_limit_pct=bless,
            memory_limit=None if mem_mib is None else f"{mem_mib}Mi",
            device_sms=sms,
            pod=decision.pod_key if decision else None,
            container=decision.container if decision else None,
            decided=decision is not None,
        )
        limits_host = limitsfile.write(
            self.limits_host_dir, alloc_id, limitsfile.Limits(bless, mem_mib, sms, self.mechanism)
        )
        status_host = records.save(self.status_host_dir, record)
        # the same env the Serve allocator reports for a placement (keti_ray.podenv)
        envs = gpu_pod_env(
            uuids,
            served,
            memory_limit_mib=mem_mib,
            shim_path=SHIM_CONTAINER_PATH,
            mps_pipe_dir=MPS_PIPE_DIR,
            status_dir=CONTAINER_STATUS_DIR,
            device_sm_count=sms,
        )
        mounts = [
            pb.Mount(
                container_path=SHIM_CONTAINER_PATH, host_path=self.shim_host_path, read_only=True
            ),
            pb.Mount(
                container_path=LD_SO_PRELOAD_CONTAINER_PATH,
                host_path=str(self.ld_so_preload_host),
                read_only=True,
            ),
            pb.Mount(
                container_path=LIMITS_CONTAINER_PATH, host_path=str(limits_host), read_only=True
            ),
            pb.Mount(
                container_path=CONTAINER_STATUS_DIR, host_path=str(status_host), read_only=False
            ),
        ]
        decided = decision.mechanism if decision is not None else None
        if is_mps_tenant(units, decided, self.mechanism):
            mounts += mps_mounts(self.mps_mounts, self.mps_pipe_dir, self.mps_shm_host_dir)
        annotations = {
            ANNOTATION_UUIDS: ",".join(uuids),
            ANNOTATION_UNITS: str(units),
            ANNOTATION_ALLOCATION: alloc_id,
        }
        with self._alloc_lock:
            replaced = [a for a, v in self.allocations.items() if v.device_ids & record.device_ids]
            self.allocations[alloc_id] = record
        self._forget(replaced)  # those units were freed and handed out again
        if self.on_allocate is not None:
            self.on_allocate(record)
        return pb.ContainerAllocateResponse(envs=envs, mounts=mounts, annotations=annotations)
