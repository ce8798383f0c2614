"""Allocation records, kept on the node in each allocation's status directory.

Allocate creates `<status dir>/<allocation-id>/` (mounted into the pod as VAI_STATUS_DIR, where
the shim writes its status lines) and writes the record beside it, in
`<status dir>/.allocations/<allocation-id>.json`, out of the pod's reach.  So the node agent (a
different process, even a different container) reads the partition table from the same
directory, and a restarted plugin recovers what it had handed out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORDS_DIR = ".allocations"


@dataclass
class GpuAllocation:
    """One Allocate answer: which units of which GPUs a container got."""

    allocation_id: str
    gpu_uuids: tuple[str, ...]
    units: int
    device_ids: frozenset[str]
    bless_limit_pct: int | None
    memory_limit: str | None
    created_at: float = field(default_factory=time.time)
    device_sms: int | None = None  # the GPU's SM count, as written into the limits file
    pod: str | None = None  # "namespace/name": from the decision, or PodResources later
    container: str | None = None
    decided: bool = False  # True: the allocator's decision chose the GPU; False: local fallback

    def to_json(self) -> str:
        d = asdict(self)
        d["gpu_uuids"] = list(self.gpu_uuids)
        d["device_ids"] = sorted(self.device_ids)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> GpuAllocation:
        d = json.loads(text)
        return cls(
            allocation_id=str(d["allocation_id"]),
            gpu_uuids=tuple(d["gpu_uuids"]),
            units=int(d["units"]),
            device_ids=frozenset(d["device_ids"]),
            bless_limit_pct=d.get("bless_limit_pct"),
            memory_limit=d.get("memory_limit"),
            created_at=float(d.get("created_at", 0.0)),
            device_sms=d.get("device_sms"),
            pod=d.get("pod"),
            container=d.get("container"),
            decided=bool(d.get("decided", False)),
        )


def save(status_dir: Path, record: GpuAllocation) -> Path:
    """Create the pod's status directory and write the record (write, then rename).

    Returns the status directory to mount into the pod."""
    d = Path(status_dir) / record.allocation_id
    d.mkdir(parents=True, exist_ok=True)
    rec_dir = Path(status_dir) / RECORDS_DIR
    rec_dir.mkdir(exist_ok=True)
    tmp = rec_dir / f".{record.allocation_id}.tmp"
    tmp.write_text(record.to_json() + "\n")
    os.replace(tmp, rec_dir / f"{record.allocation_id}.json")
    return d


def load_all(status_dir: Path) -> dict[str, GpuAllocation]:
    """Every readable record under `status_dir`, by allocation ID (unreadable ones skipped)."""
    out: dict[str, GpuAllocation] = {}
    root = Path(status_dir)
    if not root.is_dir():
        return out
    for f in (root / RECORDS_DIR).glob("*.json"):
        try:
            rec = GpuAllocation.from_json(f.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out[rec.allocation_id] = rec
    return out


def remove(status_dir: Path, allocation_id: str) -> None:
    """Drop an ended allocation's directory (its pod is gone: kubelet offers its units again)."""
    if "/" in allocation_id or allocation_id in ("", ".", ".."):
        raise ValueError(f"allocation_id must be a plain directory name, got {allocation_id!r}")
    shutil.rmtree(Path(status_dir) / allocation_id, ignore_errors=True)
    (Path(status_dir) / RECORDS_DIR / f"{allocation_id}.json").unlink(missing_ok=True)
