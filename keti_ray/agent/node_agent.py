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

from keti_ray.agent.metrics import AgentMetrics
from keti_ray.agent.mps import MpsDaemon
from keti_ray.agent.telemetry import ListSink, TelemetrySampler, TelemetrySink, read_status_dir
from keti_ray.constants import (
    DEVICE_PLUGIN_DIR,
    ENV_GPU_UUID,
    GPU_UNITS_PER_DEVICE,
    MPS_LOG_DIR,
    MPS_PIPE_DIR,
    VAI_STATUS_HOST_DIR,
)
from keti_ray.deviceplugin import allocations as records
from keti_ray.deviceplugin.allocations import GpuAllocation
from keti_ray.deviceplugin.gpu import SHIM_HOST_PATH, GpuPlugin
from keti_ray.deviceplugin.npu import NpuPlugin, discover_npus
from keti_ray.deviceplugin.nvml import GpuBackend, GpuInfo, SimulatedBackend, open_backend

log = logging.getLogger(__name__)


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
    mps_pipe_dir: str = MPS_PIPE_DIR
    mps_log_dir: str = MPS_LOG_DIR
    mps_binary: str = "nvidia-cuda-mps-control"
    status_host_dir: str = VAI_STATUS_HOST_DIR
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
        self.metrics = AgentMetrics.for_agent(self)  # Prometheus gauges, fed by the sampler
        self.sampler = TelemetrySampler(
            self.node_id,
            self.backend,
            self.gpus,
            self.metrics,  # passes every batch on to self.sink
            status_dir=Path(cfg.status_host_dir),
            units_by_gpu=self.units_by_gpu,
            partition=self.partition_table,
            interval_s=cfg.telemetry_interval_s,
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
        self.gpu_plugin = GpuPlugin(
            self.backend,
            cfg.plugin_dir,
            memory_limit=cfg.memory_limit,
            shim_host_path=cfg.shim_host_path,
            mps_pipe_dir=cfg.mps_pipe_dir,
            status_host_dir=cfg.status_host_dir,
            only_uuids=uuids or None,
        )
        self.chooser_name = self.gpu_plugin.chooser_name
        self.gpu_plugin.start()

    def _mps_check(self) -> None:
        try:
            state = self.mps.ensure()
            if state == "unavailable" and not any("MPS" in p for p in self.problems):
                self.problems.append(f"{self.mps.binary} not found: MPS not managed on this node")
        except Exception as e:
            self.problems.append(f"MPS: {e}")
            log.warning("MPS: %s", e)

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
            "mps": asdict(self.mps.status()) if self.mps else None,
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
        for a in sorted(self.allocations().values(), key=lambda a: a.created_at):
            lines = shim.get(a.allocation_id, [])
            reported = sorted({str(x["mechanism"]) for x in lines if "mechanism" in x})
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
                        "pod": next((str(x["pod"]) for x in lines if "pod" in x), None),
                        "gpu_uuid": u,
                        "gpu_index": index[u],
                        "units": min(a.units, GPU_UNITS_PER_DEVICE),
                        "bless_limit_pct": a.bless_limit_pct,
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
        self.metrics.stop()
        flush = getattr(self.sink, "flush", None)
        if callable(flush):
            flush()
        for p in (self.gpu_plugin, self.npu_plugin):
            if p is not None:
                p.stop()
        if stop_mps and self.mps is not None and self.mps.available():
            self.mps.stop()
        if self.backend is not None:
            self.backend.close()
