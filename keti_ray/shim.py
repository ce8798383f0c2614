"""The SM-capping shim (native/vai_accelerator): find or build libvai_accelerator.so, and say
what a process or a pod needs to run under it.

The library itself is C (it must load into any CUDA process, PyTorch included); this module is
its Python face for the CLI (`keti-ray shim ...`), the manifests (the `vai-accelerator-binary`
ConfigMap) and tests. Names come from keti_ray.constants so the device plugin's Allocate, the
Serve allocator and the manifests agree with it.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keti_ray.constants import (
    ENV_BLESS_LIMIT_PCT,
    ENV_LD_PRELOAD,
    ENV_MPS_PIPE_DIRECTORY,
    ENV_VAI_DEVICE_SM_COUNT,
    ENV_VAI_LOG_LEVEL,
    ENV_VAI_MECHANISM,
    ENV_VAI_MEMORY_LIMIT,
    ENV_VAI_STATUS_DIR,
    GPU_UNITS_PER_DEVICE,
    MPS_PIPE_DIR,
    SHIM_CONFIGMAP_NAME,
    SHIM_CONTAINER_PATH,
    SHIM_HOST_DIR,
    SHIM_LIBRARY_NAME,
)
from keti_ray.paths import REPO_DIR
from keti_ray.podenv import CONTAINER_STATUS_DIR
from keti_ray.quantity import shim_memory_bytes

NATIVE_DIR = REPO_DIR / "native" / "vai_accelerator"
BUILD_PATH = NATIVE_DIR / "build" / SHIM_LIBRARY_NAME
SHIM_HOST_PATH = f"{SHIM_HOST_DIR}/{SHIM_LIBRARY_NAME}"
ENV_SHIM_LIBRARY = "VAI_SHIM_LIBRARY"  # overrides where `find_library` looks first
CONFIGMAP_MAX_BYTES = 1 << 20  # Kubernetes refuses ConfigMaps over 1 MiB
LOG_LEVELS = ("error", "warn", "info", "debug")
MECHANISMS = ("mps", "green", "auto")
MAX_DEVICE_SMS = 4096  # the C parser's bound (config.c, vai_parse_device_sms)


class ShimError(RuntimeError):
    """The shim library could not be found or built."""


@dataclass(frozen=True)
class Mount:
    """A host path a pod needs inside its container (as the GPU plugin's Allocate mounts it)."""

    container_path: str
    host_path: str
    read_only: bool


# ---- configuration: the same rules as native/vai_accelerator/src/config.c ----------------------


def check_pct(pct: int) -> int:
    """SM percent 1-100 (100 = whole GPU, no cap); else a ValueError naming the field."""
    if isinstance(pct, bool) or not isinstance(pct, int) or not 1 <= pct <= GPU_UNITS_PER_DEVICE:
        raise ValueError(
            f"{ENV_BLESS_LIMIT_PCT} must be an integer 1-{GPU_UNITS_PER_DEVICE - 1} "
            f"(percent of the GPU's SMs) or {GPU_UNITS_PER_DEVICE} for no limit, got {pct!r}"
        )
    return pct


def parse_memory_limit(value: str) -> int:
    """Bytes of a VAI_MEMORY_LIMIT value: a positive integer, optionally with Ki, Mi, Gi or Ti
    (keti_ray/quantity.py, the one memory parser, in the shim's narrower form)."""
    return shim_memory_bytes(value, ENV_VAI_MEMORY_LIMIT)


def check_log_level(level: str) -> str:
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        raise ValueError(
            f"{ENV_VAI_LOG_LEVEL} must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        )
    return level.lower()


def limits_text(
    pct: int | None,
    memory_limit: str | None = None,
    device_sms: int | None = None,
    mechanism: str | None = None,
) -> str:
    """The limits file (CONTRACTS.md section 2) the GPU plugin mounts at /etc/vai/limits, in the
    form the shim's parser (config.c) reads: `KEY=VALUE` lines. `pct` None or 100 = whole GPU
    (no BLESS_LIMIT_PCT line). Bad values raise ValueError naming the key."""
    lines = ["# keti-ray GPU plugin: this allocation's limits (read-only; the shim reads it)"]
    if pct is not None:
        check_pct(pct)
        if pct < GPU_UNITS_PER_DEVICE:
            lines.append(f"{ENV_BLESS_LIMIT_PCT}={pct}")
    if memory_limit is not None:
        parse_memory_limit(memory_limit)
        lines.append(f"{ENV_VAI_MEMORY_LIMIT}={memory_limit}")
    if device_sms is not None:
        if (
            isinstance(device_sms, bool)
            or not isinstance(device_sms, int)
            or not 1 <= device_sms <= MAX_DEVICE_SMS
        ):
            raise ValueError(
                f"{ENV_VAI_DEVICE_SM_COUNT} must be an integer 1-{MAX_DEVICE_SMS}, "
                f"got {device_sms!r}"
            )
        lines.append(f"{ENV_VAI_DEVICE_SM_COUNT}={device_sms}")
    if mechanism is not None:
        if mechanism not in MECHANISMS:
            raise ValueError(
                f"{ENV_VAI_MECHANISM} must be one of {', '.join(MECHANISMS)}, got {mechanism!r}"
            )
        lines.append(f"{ENV_VAI_MECHANISM}={mechanism}")
    return "\n".join(lines) + "\n"


# ---- the library --------------------------------------------------------------------------------


def library_candidates() -> list[Path]:
    """Where the library may be, in order: $VAI_SHIM_LIBRARY, the container path, the node's
    install path, this checkout's build."""
    env = os.environ.get(ENV_SHIM_LIBRARY)
    out = [Path(env)] if env else []
    out += [Path(SHIM_CONTAINER_PATH), Path(SHIM_HOST_PATH), BUILD_PATH]
    return out


def find_library() -> Path | None:
    """The first existing candidate, or None."""
    for p in library_candidates():
        if p.is_file():
            return p
    return None


def build_library(native_dir: Path = NATIVE_DIR, make: str = "make", timeout: float = 300) -> Path:
    """Run `make -C native_dir` (gcc only; no CUDA needed) and return the built library."""
    if shutil.which(make) is None:
        raise ShimError(f"cannot build the shim: `{make}` is not on PATH")
    if not (Path(native_dir) / "Makefile").is_file():
        raise ShimError(f"cannot build the shim: no Makefile in {native_dir}")
    proc = subprocess.run(
        [make, "-C", str(native_dir)], capture_output=True, text=True, timeout=timeout
    )
    lib = Path(native_dir) / "build" / SHIM_LIBRARY_NAME
    if proc.returncode != 0 or not lib.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ShimError(f"building the shim in {native_dir} failed:\n{tail}")
    return lib


def locate_or_build() -> Path:
    """An existing library, else one built from this checkout."""
    found = find_library()
    if found is not None:
        return found
    if not NATIVE_DIR.is_dir():
        raise ShimError(
            f"{SHIM_LIBRARY_NAME} not found (looked in "
            f"{', '.join(str(p) for p in library_candidates())}) and no sources to build it"
        )
    return build_library()


# ---- what a process / a pod needs --------------------------------------------------------------


def shim_env(
    pct: int,
    memory_limit: str | None = None,
    library: str = SHIM_CONTAINER_PATH,
    status_dir: str | None = CONTAINER_STATUS_DIR,
    mps_pipe_dir: str | None = MPS_PIPE_DIR,
    log_level: str | None = None,
) -> dict[str, str]:
    """Environment that runs a CUDA process at `pct` % of the GPU's SMs under the shim.

    Defaults are a pod's (container paths, as keti_ray.podenv.gpu_pod_env and the GPU plugin's
    Allocate use); pass a local library path and None for the rest to run a process here.
    `pct` 100 preloads the shim without a cap (the memory quota still applies).
    """
    check_pct(pct)
    env = {ENV_LD_PRELOAD: str(library)}
    if pct < GPU_UNITS_PER_DEVICE:
        env[ENV_BLESS_LIMIT_PCT] = str(pct)
    if memory_limit is not None:
        parse_memory_limit(memory_limit)
        env[ENV_VAI_MEMORY_LIMIT] = memory_limit
    if status_dir is not None:
        if not str(status_dir).startswith("/"):
            raise ValueError(f"{ENV_VAI_STATUS_DIR} must be an absolute path, got {status_dir!r}")
        env[ENV_VAI_STATUS_DIR] = str(status_dir)
    if mps_pipe_dir is not None:
        env[ENV_MPS_PIPE_DIRECTORY] = str(mps_pipe_dir)
    if log_level is not None:
        env[ENV_VAI_LOG_LEVEL] = check_log_level(log_level)
    return env


def shim_mounts(
    status_host_dir: str,
    shim_host_path: str = SHIM_HOST_PATH,
    mps_pipe_dir: str = MPS_PIPE_DIR,
) -> list[Mount]:
    """The host paths a pod under the shim needs: the library (read-only), the node's MPS pipe
    directory, and its allocation's status directory (where the shim writes status lines)."""
    return [
        Mount(SHIM_CONTAINER_PATH, shim_host_path, True),
        Mount(mps_pipe_dir, mps_pipe_dir, False),
        Mount(CONTAINER_STATUS_DIR, status_host_dir, False),
    ]


def pod_fragment(
    pct: int,
    status_host_dir: str,
    memory_limit: str | None = None,
    shim_host_path: str = SHIM_HOST_PATH,
    mps_pipe_dir: str = MPS_PIPE_DIR,
) -> dict[str, Any]:
    """A container spec fragment (env, volumeMounts) and the pod's volumes, Kubernetes-shaped."""
    env = shim_env(pct, memory_limit, mps_pipe_dir=mps_pipe_dir)
    mounts = shim_mounts(status_host_dir, shim_host_path, mps_pipe_dir)
    names = ["vai-shim", "vai-mps-pipe", "vai-status"]
    return {
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "volumeMounts": [
            {"name": n, "mountPath": m.container_path, "readOnly": m.read_only}
            for n, m in zip(names, mounts, strict=True)
        ],
        "volumes": [
            {
                "name": n,
                "hostPath": {"path": m.host_path, "type": "File" if m.read_only else "Directory"},
            }
            for n, m in zip(names, mounts, strict=True)
        ],
    }


def configmap_manifest(library: Path, namespace: str = "kube-system") -> dict[str, Any]:
    """The ConfigMap `vai-accelerator-binary` carrying the built library as binaryData (the GPU
    plugin DaemonSet copies it to SHIM_HOST_DIR on every node)."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace or ""):
        raise ValueError(
            f"namespace must be a DNS-1123 label (e.g. kube-system), got {namespace!r}"
        )
    data = Path(library).read_bytes()
    if len(data) > CONFIGMAP_MAX_BYTES:
        raise ValueError(
            f"{library} is {len(data)} bytes; a ConfigMap holds at most {CONFIGMAP_MAX_BYTES}"
        )
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{library} is not an ELF shared library")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": SHIM_CONFIGMAP_NAME,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "vai-accelerator",
                "app.kubernetes.io/part-of": "keti-ray",
            },
        },
        "binaryData": {SHIM_LIBRARY_NAME: base64.b64encode(data).decode("ascii")},
    }
