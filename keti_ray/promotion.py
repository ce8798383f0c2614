"""The serving pointer: which checkpoint the allocator serves, switched atomically.

A retrain promotes a candidate by rewriting one small JSON file (temporary file + rename):
{"policy": "ppo", "checkpoint": PATH, "sha256": DIGEST, ...}. The Serve app's user_config
names the pointer (`{"pointer": PATH}`) and the state actor polls it, so a promotion reaches
every replica without a redeploy, and a restarted actor comes back on the promoted policy.
The digest is checked against the checkpoint's manifest before anything is loaded.
`paired_test` is the promotion rule: a paired comparison over >= 10 held-out seeds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


MIN_PAIRED_SEEDS = 10


class PromotionError(ValueError):
    """A promotion test that cannot be run as asked (too few or unpaired seeds)."""


def paired_test(
    serving: Sequence[float], candidate: Sequence[float], margin: float
) -> dict[str, Any]:
    """Whether `candidate` beats `serving` on paired held-out replays (lower is better).

    The same seeds (the same tuned workloads) are replayed by both; d_i = serving_i -
    candidate_i is the improvement on seed i. The candidate wins only when the mean
    improvement exceeds twice its standard error plus `margin` (percentage points), so a
    candidate that is the serving policy replayed on other seeds (noise) is refused.
    """
    s = np.asarray(serving, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if s.shape != c.shape or s.ndim != 1:
        raise PromotionError(
            f"paired test: serving ({s.size}) and candidate ({c.size}) need one score per seed"
        )
    if s.size < MIN_PAIRED_SEEDS:
        raise PromotionError(
            f"paired test: eval_seeds must hold at least {MIN_PAIRED_SEEDS} held-out seeds, "
            f"got {s.size}"
        )
    if margin < 0:
        raise PromotionError(f"paired test: margin must be >= 0 points, got {margin}")
    d = s - c
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(d.size))
    threshold = 2.0 * se + margin
    return {
        "seeds": int(d.size),
        "mean_improvement": round(mean, 4),
        "standard_error": round(se, 4),
        "margin": margin,
        "threshold": round(threshold, 4),
        "promote": bool(mean > threshold),
    }
