"""The limits file the shim reads (CONTRACTS §2) and the `/etc/ld.so.preload` file.

Allocate writes one limits file per allocation, `<limits dir>/<allocation-id>/limits`, and
mounts it read-only at `/etc/vai/limits`: the shim applies the stricter of that file and the
pod's env, so a pod spec that sets `BLESS_LIMIT_PCT=100` cannot raise its share.  The
ld.so.preload file names the shim's container path; mounted read-only at `/etc/ld.so.preload`
it makes the loader preload the shim whatever `LD_PRELOAD` the pod sets.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from keti_ray.constants import (
    ENV_BLESS_LIMIT_PCT,
    ENV_VAI_DEVICE_SM_COUNT,
    ENV_VAI_MECHANISM,
    ENV_VAI_MEMORY_LIMIT,
    SHIM_CONTAINER_PATH,
)
from keti_ray.quantity import mib_text

LIMITS_FILE = "limits"
LD_SO_PRELOAD_FILE = "ld.so.preload"
MECHANISMS = ("mps", "green", "auto")


@dataclass(frozen=True)
class Limits:
    """What one allocation may use: None = no limit on that axis."""

    limit_pct: int | None  # BLESS_LIMIT_PCT 1..99, None = whole GPU
    memory_mib: int | None
    device_sms: int | None
    mechanism: str | None = None

    def __post_init__(self) -> None:
        if self.limit_pct is not None and not 1 <= self.limit_pct <= 99:
            raise ValueError(f"{ENV_BLESS_LIMIT_PCT} must be 1-99 or absent, got {self.limit_pct}")
        if self.mechanism is not None and self.mechanism not in MECHANISMS:
            raise ValueError(
                f"{ENV_VAI_MECHANISM} must be one of {MECHANISMS}, got {self.mechanism!r}"
            )

    def text(self, allocation_id: str) -> str:
        """The file's content: `KEY=VALUE` lines, absent keys for absent limits."""
        lines = [f"# keti-ray limits for allocation {allocation_id}; read-only in the pod"]
        if self.limit_pct is not None:
            lines.append(f"{ENV_BLESS_LIMIT_PCT}={self.limit_pct}")
        if self.memory_mib is not None:
            lines.append(f"{ENV_VAI_MEMORY_LIMIT}={mib_text(self.memory_mib)}")
        if self.device_sms:
            lines.append(f"{ENV_VAI_DEVICE_SM_COUNT}={self.device_sms}")
        if self.mechanism is not None:
            lines.append(f"{ENV_VAI_MECHANISM}={self.mechanism}")
        return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """`KEY=VALUE` lines of a limits file (comments and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _check_id(allocation_id: str) -> None:
    if "/" in allocation_id or allocation_id in ("", ".", ".."):
        raise ValueError(f"allocation_id must be a plain directory name, got {allocation_id!r}")


def write(limits_dir: Path, allocation_id: str, limits: Limits) -> Path:
    """Write `<limits_dir>/<allocation_id>/limits` (write, then rename); return its path."""
    _check_id(allocation_id)
    d = Path(limits_dir) / allocation_id
    d.mkdir(parents=True, exist_ok=True)
    path = d / LIMITS_FILE
    tmp = d / f".{LIMITS_FILE}.tmp"
    tmp.write_text(limits.text(allocation_id))
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)
    return path


def remove(limits_dir: Path, allocation_id: str) -> None:
    """Drop an ended allocation's limits directory."""
    _check_id(allocation_id)
    shutil.rmtree(Path(limits_dir) / allocation_id, ignore_errors=True)


def existing(limits_dir: Path) -> set[str]:
    """Allocation IDs that have a limits directory."""
    root = Path(limits_dir)
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def write_ld_so_preload(limits_dir: Path, shim_container_path: str = SHIM_CONTAINER_PATH) -> Path:
    """The host file mounted at /etc/ld.so.preload: one line, the shim's container path."""
    root = Path(limits_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LD_SO_PRELOAD_FILE
    want = shim_container_path + "\n"
    if not path.is_file() or path.read_text() != want:
        tmp = root / f".{LD_SO_PRELOAD_FILE}.tmp"
        tmp.write_text(want)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    return path
