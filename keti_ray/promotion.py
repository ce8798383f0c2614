"""The serving pointer: which checkpoint the allocator serves, switched atomically.

A retrain promotes a candidate by rewriting one small JSON file (temporary file + rename):
{"policy": "ppo", "checkpoint": PATH, "sha256": DIGEST, ...}. The Serve app's user_config
names the pointer (`{"pointer": PATH}`) and the state actor polls it, so a promotion reaches
every replica without a redeploy, and a restarted actor comes back on the promoted policy.
The digest is checked against the checkpoint's manifest before anything is unpickled.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class PointerError(ValueError):
    """A serving pointer that cannot be used; the message says which field is wrong."""


def write_pointer(
    path: str | Path,
    checkpoint: str | Path | None,
    sha256: str | None,
    policy: str = "ppo",
    **info: Any,
) -> dict:
    """Point the allocator at `checkpoint` (atomic: readers see the old or the new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "policy": policy,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "sha256": sha256,
        "promoted_at": time.time(),
        **info,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return record


def read_pointer(path: str | Path) -> dict:
    """The pointer's record, checked: `policy` a name, `checkpoint` and `sha256` for PPO."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise PointerError(f"serving pointer {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PointerError(f"serving pointer {path}: not JSON ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("policy"), str):
        raise PointerError(f"serving pointer {path}: field 'policy' must be a policy name")
    if record["policy"] == "ppo" and record.get("checkpoint"):
        if not isinstance(record.get("sha256"), str) or len(record["sha256"]) != 64:
            raise PointerError(
                f"serving pointer {path}: field 'sha256' must be the checkpoint's 64-hex digest"
            )
    return record
