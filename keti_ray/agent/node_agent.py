"""NodeAgent: one per GPU/NPU node; runs the device plugins, the MPS daemon and telemetry.

It is a plain class so it runs in a process of its own (`keti-ray agent --local`, the
DaemonSet) or as a Ray actor (`Fleet`, pinned to its node and restarted on failure).  Where
a node-specific path is configured with `{node_id}` in it, the agent fills in its node ID, so
several emulated nodes on one machine do not share sockets.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keti_ray.agent.ceilings import ceilings_for
from keti_ray.agent.mps import MpsCeilings, MpsDaemon
from keti_ray.agent.telemetry import (
    ListSink,
    TelemetrySampler,
    TelemetrySink,
    read_status_dir,
    sms_granted,
)
from keti_ray.constants import (
    DEVICE_PLUGIN_DIR,
    ENV_GPU_UUID,
    GPU_UNITS_PER_DEVICE,
    LIMITS_HOST_DIR,
    MPS_LOG_DIR,
    MPS_PIPE_DIR,
    MPS_SHM_HOST_DIR,
    VAI_STATUS_HOST_DIR,
)
from keti_ray.deviceplugin import allocations as records
from keti_ray.deviceplugin.allocations import GpuAllocation
from keti_ray.deviceplugin.gpu import SHIM_HOST_PATH, GpuPlugin
from keti_ray.deviceplugin.npu import NpuPlugin, discover_npus
from keti_ray.deviceplugin.nvml import GpuBackend, GpuInfo, SimulatedBackend, open_backend
from keti_ray.shares import Mechanism, device_sm_count, granted_sms

log = logging.getLogger(__name__)

ALLOCATE_MPS_TIMEOUT_S = 2.0  # the longest Allocate waits for the MPS daemon


@dataclass
class AgentConfig:
    """What a NodeAgent runs; paths may contain `{node_id}`."""

    plugin_dir: str = DEVICE_PLUGIN_DIR
    gpu: bool = True  # a GPU node: discover GPUs (telemetry, partition table)
    npu: bool = False
    serve_plugins: bool = True  # serve the kubelet plugins here (False: a DaemonSet does)
    simulate: int | None = None  # N simulated GPUs instead of NVML
    memory_limit: str = "proportional"
    shim_host_path: str = SHIM_HOST_PATH
    mps: bool = True
    mps_pipe_dir: str = MPS_PIPE_DIR  # where the agent's MPS daemon puts its pipes
    mps_pipe_host_dir: str | None = None  # that directory on the node (None: the same path)
    mps_shm_host_dir: str = MPS_SHM_HOST_DIR  # the MPS server's /dev/shm on the node
    mps_mounts: str | None = None  # MPS tenants' pipe mount: ro, rw, none (None: ro if mps)
    mps_log_dir: str = MPS_LOG_DIR
    mps_binary: str = "nvidia-cuda-mps-control"
    status_host_dir: str = VAI_STATUS_HOST_DIR
    limits_host_dir: str = LIMITS_HOST_DIR
    mps_ceilings: bool = True  # set the MPS server ceilings from the allocations
    ceilings_interval_s: float = 0.5  # re-check when the plugin runs in another process
    apiserver: str | None = None  # decisions: None = no API server; "incluster"; or a URL
    apiserver_token: str | None = None  # with a URL (tests)
    pod_resources_socket: str | None = None  # kubelet's PodResources socket (reconcile)
    reconcile_interval_s: float = 30.0
    sysfs_root: str = "/sys"
    dev_root: str = "/dev"
    telemetry_interval_s: float = 1.0
    mps_check_s: float = 10.0
    gpu_uuids: list[str] = field(default_factory=list)  # empty: $GPU_UUID, else every GPU
    node_name: str | None = None  # the node's name; None: the Ray node ID (or the host name)
    gpu_model: str = ""  # simulated GPUs' model name (empty: the simulator's default)

    def resolve(self, node_id: str) -> AgentConfig:
        """A copy with `{node_id}` filled in every path."""
        values = asdict(self)
        for k, v in values.items():
            if isinstance(v, str):
                values[k] = v.replace("{node_id}", node_id)
        return AgentConfig(**values)


class AgentMetrics:
    """The node agent's gauges (names in CONTRACTS §5), in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        self.up = Gauge("keti_agent_up", "1 while the node agent runs", registry=self.registry)
        self.up.set(1)
        self.gpu_healthy = Gauge(
            "keti_agent_gpu_healthy",
            "1 when the GPU is Healthy",
            ["gpu_uuid"],
            registry=self.registry,
        )
        self.occupancy = Gauge(
            "keti_agent_sm_occupancy_ratio",
            "SMs the shim granted to running processes on the GPU, over the GPU's SMs",
            ["gpu_uuid"],
            registry=self.registry,
        )
        self.shimless = Gauge(
            "keti_agent_shimless_processes",
            "processes computing on a shared GPU without a shim status line",
            ["gpu_uuid"],
            registry=self.registry,
        )


def current_node_id() -> str:
    """The Ray node ID inside a Ray worker, else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:
        pass
    return socket.gethostname()


class NodeAgent:
    """Device plugins + MPS + telemetry for the node it runs on."""

    def __init__(self, config: AgentConfig | None = None, sink: TelemetrySink | None = None):
        self.node_id = (config.node_name if config else None) or current_node_id()
        self.config = (config or AgentConfig()).resolve(self.node_id)
        cfg = self.config
        self.sink = sink if sink is not None else ListSink()
        self.started_at = time.time()
        self.backend: GpuBackend | None = None
        self.gpus: list[GpuInfo] = []
        self.gpu_plugin: GpuPlugin | None = None
        self.npu_plugin: NpuPlugin | None = None
        self.mps: MpsDaemon | None = None
        self.chooser_name = ""
        self.problems: list[str] = []  # what could not start, for info()
        self._halt = threading.Event()
        self._ceilings_lock = threading.Lock()
        self.ceilings: MpsCeilings | None = None  # last applied
        self._closers: list = []
        self.metrics = AgentMetrics()

        if cfg.gpu:
            self._start_gpu(cfg)
        if cfg.npu and cfg.serve_plugins:
            npus = discover_npus(cfg.sysfs_root, cfg.dev_root)
            self.npu_plugin = NpuPlugin(npus, cfg.plugin_dir)
            self.npu_plugin.start()
        if cfg.mps:
            self.mps = MpsDaemon(cfg.mps_pipe_dir, cfg.mps_log_dir, binary=cfg.mps_binary)
            self._mps_check()
            threading.Thread(target=self._mps_loop, name="mps-health", daemon=True).start()
            if cfg.mps_ceilings and self.gpu_plugin is None:  # plugin elsewhere: poll records
                threading.Thread(
                    target=self._ceilings_loop, name="mps-ceilings", daemon=True
                ).start()
        self.sampler = TelemetrySampler(
            self.node_id,
            self.backend,
            self.gpus,
            self.sink,
            status_dir=Path(cfg.status_host_dir),
            units_by_gpu=self.units_by_gpu,
            partition=self.partition_table,
            interval_s=cfg.telemetry_interval_s,
            observers=[self._observe],
        )
        self.sampler.start()

    def _start_gpu(self, cfg: AgentConfig) -> None:
        try:
            if cfg.simulate is not None:  # seeded by the node name: the allocator's GPU UUIDs
                extra = {"name": cfg.gpu_model} if cfg.gpu_model else {}
                self.backend = SimulatedBackend(cfg.simulate, seed=cfg.node_name, **extra)
            else:
                self.backend = open_backend(None)
        except Exception as e:  # no driver: the node serves no GPUs, and says why
            self.problems.append(f"NVML unavailable ({e}); use simulate=N for simulated GPUs")
            log.warning(self.problems[-1])
            return
        uuids = cfg.gpu_uuids or [u for u in os.environ.get(ENV_GPU_UUID, "").split(",") if u]
        found = self.backend.discover()
        missing = sorted(set(uuids) - {g.uuid for g in found})
        if missing:
            raise ValueError(
                f"GPU_UUID names {missing}, which this node does not have; it has "
                f"{[g.uuid for g in found]}"
            )
        self.gpus = [g for g in found if not uuids or g.uuid in uuids]
        if not cfg.serve_plugins:
            return
        decisions, pod_resources = self._decision_sources(cfg)
        self.gpu_plugin = GpuPlugin(
            self.backend,
            cfg.plugin_dir,
            memory_limit=cfg.memory_limit,
            shim_host_path=cfg.shim_host_path,
            mps_pipe_dir=cfg.mps_pipe_host_dir or cfg.mps_pipe_dir,
            mps_shm_host_dir=cfg.mps_shm_host_dir,
            mps_mounts=cfg.mps_mounts or ("ro" if cfg.mps else "none"),
            status_host_dir=cfg.status_host_dir,
            limits_host_dir=cfg.limits_host_dir,
            only_uuids=uuids or None,
            decisions=decisions,
            pod_resources=pod_resources,
            reconcile_interval_s=cfg.reconcile_interval_s,
            # raise the MPS ceilings BEFORE Allocate returns (the pod's process starts after)
            on_allocate=lambda _rec: self.update_ceilings(timeout_s=ALLOCATE_MPS_TIMEOUT_S),
            registry=self.metrics.registry,
        )
        if decisions is not None:
            decisions.held = self.gpu_plugin._held_containers
        self.chooser_name = self.gpu_plugin.chooser_name
        self.gpu_plugin.start()

    def _decision_sources(self, cfg: AgentConfig):
        """The API-server pod lister and PodResources client the plugin uses, where set."""
        from keti_ray.deviceplugin.decisions import ApiServerPods, watched_finder
        from keti_ray.deviceplugin.podresources import PodResourcesClient

        pod_resources = None
        if cfg.pod_resources_socket:
            pod_resources = PodResourcesClient(cfg.pod_resources_socket)
            self._closers.append(pod_resources.close)
        decisions = None
        if cfg.apiserver:
            host = None if cfg.apiserver == "incluster" else cfg.apiserver
            pods = ApiServerPods.from_environment(
                self.node_id, host=host, token=cfg.apiserver_token
            )
            self._closers.append(pods.close)
            decisions, watcher = watched_finder(self.node_id, pods)
            self._closers.insert(0, watcher.stop)
        return decisions, pod_resources

    def _mps_check(self) -> None:
        try:
            state = self.mps.ensure()
            if state == "unavailable" and not any("MPS" in p for p in self.problems):
                self.problems.append(f"{self.mps.binary} not found: MPS not managed on this node")
            if state == "restarted":  # `quit` forgot every value: set the ceilings again
                with self._ceilings_lock:
                    self.ceilings = None
            if state != "unavailable":
                self.update_ceilings()
        except Exception as e:
            self.problems.append(f"MPS: {e}")
            log.warning("MPS: %s", e)

    def _observe(self, batch: list[dict[str, Any]]) -> None:
        """Each telemetry batch -> the agent's Prometheus gauges (CONTRACTS §5)."""
        for r in batch:
            if r["kind"] != "gpu":
                continue
            u = r["gpu_uuid"]
            self.metrics.gpu_healthy.labels(u).set(1.0 if self.gpu_healthy(u) else 0.0)
            ratio = (r["sms_granted"] or 0) / r["sms_device"] if r.get("sms_device") else 0.0
            self.metrics.occupancy.labels(u).set(min(1.0, ratio))
            self.metrics.shimless.labels(u).set(len(r["shimless_pids"]))

    def gpu_healthy(self, uuid: str) -> bool:
        """The plugin's verdict where it runs here, else a probe."""
        if self.gpu_plugin is not None:
            return self.gpu_plugin.gpu_healthy(uuid)
        try:
            return bool(self.backend and self.backend.probe(uuid))
        except Exception:
            return False

    def metrics_text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics.registry).decode()

    def update_ceilings(self, timeout_s: float | None = None) -> MpsCeilings | None:
        """Apply the MPS ceilings the allocations call for, when they changed (ceilings.py).
        Inside Allocate the daemon gets `ALLOCATE_MPS_TIMEOUT_S`: a hung daemon must not hold
        kubelet's admission (the shim's env still caps the pod)."""
        if self.mps is None or not self.config.mps_ceilings or not self.mps.available():
            return None
        want = ceilings_for(self.allocations().values(), self.gpus)
        with self._ceilings_lock:
            if want == self.ceilings:
                return want
            try:
                self.mps.apply_ceilings(want, timeout_s)
            except Exception as e:  # an unreachable daemon: the shim's env still caps clients
                log.warning("MPS ceilings not applied: %s", e)
                return None
            self.ceilings = want
        log.info(
            "MPS ceilings: %d%% threads, pinned MiB per device %s", want.thread_pct, want.pinned_mib
        )
        return want

    def _ceilings_loop(self) -> None:
        while not self._halt.wait(self.config.ceilings_interval_s):
            self.update_ceilings()

    def _mps_loop(self) -> None:
        while not self._halt.wait(self.config.mps_check_s):
            self._mps_check()

    # ----- what callers ask ------------------------------------------------------------------
    def ping(self) -> str:
        return self.node_id

    def info(self) -> dict[str, Any]:
        plugins = {}
        for p in (self.gpu_plugin, self.npu_plugin):
            if p is not None:
                plugins[p.resource_name] = {
                    "socket": str(p.socket_path),
                    "registered": p.registered,
                    "registrations": p.registrations,
                }
        return {
            "node_id": self.node_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "gpus": [asdict(g) for g in self.gpus],
            "simulated": bool(self.backend is not None and self.backend.simulated),
            "chooser": self.chooser_name,
            "plugins": plugins,
            "gpu_health": self.gpu_plugin.health_state() if self.gpu_plugin else None,
            "decision_fallbacks": (
                {f"{c}/{r}": n for (c, r), n in self.gpu_plugin.fallbacks.items()}
                if self.gpu_plugin
                else None
            ),
            "mps": asdict(self.mps.status()) if self.mps else None,
            "mps_ceilings": asdict(self.ceilings) if self.ceilings else None,
            "telemetry": {"samples": self.sampler.samples, "errors": self.sampler.errors},
            "problems": list(self.problems),
        }

    def allocations(self) -> dict[str, GpuAllocation]:
        """This node's GPU allocations: the records in the status directory (written by
        whichever process served Allocate) and those of the plugin served here."""
        mine = {g.uuid for g in self.gpus}
        found = records.load_all(Path(self.config.status_host_dir))
        if self.gpu_plugin is not None:
            found.update(self.gpu_plugin.allocations)
        return {a: r for a, r in found.items() if set(r.gpu_uuids) <= mine}

    def units_by_gpu(self) -> dict[str, int]:
        """Units handed out per GPU (drives the simulated utilisation)."""
        out: dict[str, int] = {}
        for a in self.allocations().values():
            for u in a.gpu_uuids:
                out[u] = out.get(u, 0) + a.units // len(a.gpu_uuids)
        return out

    def partition_table(self) -> list[dict[str, Any]]:
        """Which allocation holds which share of which GPU, by which mechanism."""
        shim: dict[str, list[dict]] = {}
        for s in read_status_dir(Path(self.config.status_host_dir)):
            shim.setdefault(s["allocation_id"], []).append(s)
        mps_up = bool(self.mps and self.mps.status().running)
        index = {g.uuid: g.index for g in self.gpus}
        rows = []
        sms_of = {g.uuid: g.sm_count or device_sm_count(g.name) for g in self.gpus}
        for a in sorted(self.allocations().values(), key=lambda a: a.created_at):
            lines = shim.get(a.allocation_id, [])
            reported = sorted({str(x["mechanism"]) for x in lines if "mechanism" in x})
            grants = [g for g in (sms_granted(x) for x in lines) if g]
            device_sms = next(
                (
                    x["sms_device"]
                    for x in lines
                    if isinstance(x.get("sms_device"), int) and x["sms_device"] > 0
                ),
                a.device_sms or sms_of.get(a.gpu_uuids[0]),
            )
            mech = Mechanism.GREEN if any("green" in m for m in reported) else Mechanism.MPS
            booked_pct = a.bless_limit_pct  # the served share (1-4 units serve as 5%)
            if reported:
                mechanism = ",".join(reported)
            elif a.units >= GPU_UNITS_PER_DEVICE:
                mechanism = "whole-gpu"
            else:
                mechanism = "mps" if mps_up else "shim"
            for u in a.gpu_uuids:
                rows.append(
                    {
                        "allocation_id": a.allocation_id,
                        "pod": next((str(x["pod"]) for x in lines if "pod" in x), a.pod),
                        "gpu_uuid": u,
                        "gpu_index": index[u],
                        "units": min(a.units, GPU_UNITS_PER_DEVICE),
                        "bless_limit_pct": a.bless_limit_pct,
                        "sm_pct_booked": booked_pct or GPU_UNITS_PER_DEVICE,
                        "sms_booked": granted_sms(booked_pct, device_sms, mech)
                        if device_sms
                        else None,
                        "sms_granted": max(grants) if grants else None,
                        "sms_device": device_sms,
                        "memory_limit": a.memory_limit,
                        "mechanism": mechanism,
                        "reported_by_shim": bool(reported),
                        "pids": sorted({int(x["pid"]) for x in lines if "pid" in x}),
                        "created_at": a.created_at,
                    }
                )
        return rows

    def sample_now(self) -> list[dict[str, Any]]:
        return self.sampler.sample()

    def simulate_gpu_failure(self, index: int, failed: bool = True) -> bool:
        """Simulated GPUs only: fail / recover one (for drills); False on real GPUs."""
        if not isinstance(self.backend, SimulatedBackend) or not self.gpus:
            return False
        uuid = self.gpus[index].uuid
        (self.backend.fail if failed else self.backend.recover)(uuid)
        return True

    def stop(self, stop_mps: bool = False) -> None:
        """Stop plugins and telemetry (and the MPS daemon when asked: pods may still use it)."""
        self._halt.set()
        self.sampler.stop()
        flush = getattr(self.sink, "flush", None)
        if callable(flush):
            flush()
        for p in (self.gpu_plugin, self.npu_plugin):
            if p is not None:
                p.stop()
        if stop_mps and self.mps is not None and self.mps.available():
            self.mps.stop()
        for close in self._closers:
            close()
        if self.backend is not None:
            self.backend.close()
