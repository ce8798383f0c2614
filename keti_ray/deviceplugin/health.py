"""Which XIDs take a GPU out of service, and for how long.

From NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors, "Resolution Bucket"):
- application XIDs are the program's fault, not the GPU's (the list NVIDIA's own plugin skips);
- fatal XIDs need a GPU reset or a reboot before the GPU can be trusted again; the plugin keeps
  such a GPU Unhealthy until it sees a reset, whatever the probe says, and remembers it across
  its own restarts (a state file under the status directory, on the node's /var/run);
- any other XID is recoverable: Unhealthy until `recovery_probes` probes in a row pass.
A reset is seen when the backend's reset token changes (NVML: the kernel's boot ID, so a
reboot; the simulator: `reset()`), or when an operator removes the state file after
`nvidia-smi -r` (the plugin must be stopped for that reset anyway: NVML clients block it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# 13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing,
# 45 preemptive cleanup, 68 video processor exception, 109 context switch timeout.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

# Catalogue buckets RESET_GPU / RESTART_BM (reboot):
# 48 double-bit ECC error; 64 ECC page retirement / row remapping failure; 74 NVLink error;
# 79 GPU has fallen off the bus; 95 uncontained ECC error; 119 GSP RPC timeout;
# 120 GSP error; 140 unrecovered ECC error.
FATAL_XIDS = frozenset({48, 64, 74, 79, 95, 119, 120, 140})

HEALTH_DIR = ".health"


def is_fatal(xid: int) -> bool:
    return xid in FATAL_XIDS


@dataclass(frozen=True)
class FatalRecord:
    """A GPU waiting for a reset: the XID that took it out and the reset token at the time."""

    uuid: str
    xid: int
    at: float
    reset_token: str


def _path(state_dir: Path, uuid: str) -> Path:
    if "/" in uuid or uuid in ("", ".", ".."):
        raise ValueError(f"GPU uuid must be a plain name, got {uuid!r}")
    return Path(state_dir) / HEALTH_DIR / f"{uuid}.json"


def save_fatal(state_dir: Path, record: FatalRecord) -> Path:
    p = _path(state_dir, record.uuid)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)) + "\n")
    os.replace(tmp, p)
    return p


def load_fatal(state_dir: Path, uuid: str) -> FatalRecord | None:
    try:
        d = json.loads(_path(state_dir, uuid).read_text())
        return FatalRecord(str(d["uuid"]), int(d["xid"]), float(d["at"]), str(d["reset_token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_fatal(state_dir: Path, uuid: str) -> None:
    _path(state_dir, uuid).unlink(missing_ok=True)


def boot_id() -> str:
    """The kernel's boot ID: changes on every reboot (a reboot resets every GPU)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"unknown-boot-{int(time.time() // 86400)}"
