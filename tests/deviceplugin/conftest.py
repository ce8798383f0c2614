"""Fixtures: a short temporary plugin directory (Unix socket paths are limited to 107 bytes),
the kubelet emulator on it, and a GPU plugin over simulated GPUs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from keti_ray.deviceplugin.gpu import GpuPlugin
from keti_ray.deviceplugin.nvml import SimulatedBackend

sys.path.insert(0, str(Path(__file__).parent))  # the emulator is imported as a plain module
from kubelet_emulator import KubeletEmulator  # noqa: E402


@pytest.fixture
def plugin_dir():
    d = Path(tempfile.mkdtemp(prefix="kdp", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir):
    k = KubeletEmulator(plugin_dir).start()
    yield k
    k.stop()


@pytest.fixture
def make_gpu_plugin(plugin_dir):
    started: list[GpuPlugin] = []

    def make(n: int = 2, **kw) -> tuple[GpuPlugin, SimulatedBackend]:
        extra = {k: kw.pop(k) for k in ("sm_count", "name", "memory_mib") if k in kw}
        backend = SimulatedBackend(
            n, numa_nodes=kw.pop("numa_nodes", 1), seed=kw.pop("seed", "test-node"), **extra
        )
        kw.setdefault("status_host_dir", str(plugin_dir / "status"))
        kw.setdefault("limits_host_dir", str(plugin_dir / "limits"))
        kw.setdefault("mps_pipe_dir", str(plugin_dir / "mps"))
        kw.setdefault("mps_shm_host_dir", str(plugin_dir / "mps-shm"))
        kw.setdefault("shim_host_path", str(plugin_dir / "libvai_accelerator.so"))
        kw.setdefault("probe_interval_s", 0.1)
        plugin = GpuPlugin(backend, plugin_dir, **kw)
        started.append(plugin)
        return plugin, backend

    yield make
    for p in started:
        p.stop()
