"""The container environment a GPU share turns into (what the GPU plugin's Allocate returns).

One function so the device plugin, the Serve allocator and the manifests agree on names.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from keti_ray.constants import (
    ENV_BLESS_LIMIT_PCT,
    ENV_LD_PRELOAD,
    ENV_MPS_PIPE_DIRECTORY,
    ENV_NVIDIA_VISIBLE_DEVICES,
    ENV_VAI_MEMORY_LIMIT,
    ENV_VAI_STATUS_DIR,
    GPU_UNITS_PER_DEVICE,
    MPS_PIPE_DIR,
    SHIM_CONTAINER_PATH,
)
from keti_ray.shares import limit_pct

CONTAINER_STATUS_DIR = "/var/run/vai"


def sm_pct_for_milli(gpu_milli: int) -> int:
    """SM percent for a share of one GPU (`keti_ray.shares`' rounding rule; 100 = whole GPU):
    470 milli -> 47, 995 -> 99 (capped: only 1000 is uncapped), 5 -> 1."""
    return limit_pct(gpu_milli) or GPU_UNITS_PER_DEVICE


def gpu_pod_env(
    gpu_uuids: Sequence[str],
    sm_pct: int,
    memory_limit_mib: int | None = None,
    shim_path: str = SHIM_CONTAINER_PATH,
    mps_pipe_dir: str = MPS_PIPE_DIR,
    status_dir: str = CONTAINER_STATUS_DIR,
) -> dict[str, str]:
    """Env for a pod holding `gpu_uuids` at `sm_pct` % of SMs (100 = whole GPUs, no cap)."""
    if not gpu_uuids:
        raise ValueError("gpu_uuids must name at least one GPU")
    if not 1 <= sm_pct <= GPU_UNITS_PER_DEVICE:
        raise ValueError(f"sm_pct must be 1-{GPU_UNITS_PER_DEVICE}, got {sm_pct}")
    env = {
        ENV_LD_PRELOAD: shim_path,
        ENV_NVIDIA_VISIBLE_DEVICES: ",".join(gpu_uuids),
        ENV_MPS_PIPE_DIRECTORY: mps_pipe_dir,
        ENV_VAI_STATUS_DIR: status_dir,
    }
    if sm_pct < GPU_UNITS_PER_DEVICE:
        env[ENV_BLESS_LIMIT_PCT] = str(sm_pct)
    if memory_limit_mib is not None:
        env[ENV_VAI_MEMORY_LIMIT] = f"{memory_limit_mib}Mi"
    return env


def simulated_gpu_uuid(node: str, index: int) -> str:
    """A stable, UUID-shaped id for a simulated GPU (same node and index -> same id)."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}/gpu{index}.keti-ray.sim"))


# Device memory of the trace's GPU models (and current ones), for proportional quotas.
GPU_MEMORY_MIB_BY_MODEL = {
    "P100": 16 * 1024,
    "T4": 16 * 1024,
    "V100M16": 16 * 1024,
    "V100M32": 32 * 1024,
    "A10": 24 * 1024,
    "A100": 80 * 1024,
    "H100": 80 * 1024,
    "H200": 141 * 1024,
}


def gpu_memory_mib(model: str) -> int | None:
    """Memory of one GPU of `model` in MiB, or None when the model is not known (no quota)."""
    return GPU_MEMORY_MIB_BY_MODEL.get(model)
