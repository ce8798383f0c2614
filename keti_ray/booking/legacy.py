"""The old JSON-lines journal (keti-ray before the booking store), read once for import.

Its records held node and GPU INDICES into the node list of the run that wrote them; the import
maps them through the node list given now (the only one there is) and the booking store's
start-up check sets aside whatever no longer fits. A torn last line (no newline: the crash
happened before it was acknowledged) is skipped. Any other unreadable line stops the import
with its line number: a garbled release line could otherwise bring a released pod back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from keti_ray.booking.store import StoreError


@dataclass
class LegacyJournal:
    """The bookings a journal leaves standing, in booking order."""

    path: Path
    live: dict[str, dict] = field(default_factory=dict)  # pod name -> allocate record
    lines: int = 0
    torn_tail: bool = False


def read_legacy_journal(path: str | Path) -> LegacyJournal:
    path = Path(path)
    data = path.read_bytes()
    out = LegacyJournal(path)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        out.torn_tail = True  # never acknowledged: the fsync came after the newline
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        out.lines += 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            op = record["op"]
            if op == "allocate":
                pod, placement = record["pod"], record["placement"]
                name = pod["name"]
                _check_allocate(pod, placement)
                out.live.setdefault(name, record)
            elif op == "release":
                name = record["pod"]
                if not isinstance(name, str):
                    raise TypeError("'pod' must be a pod name")
                out.live.pop(name, None)
            else:
                raise ValueError(f"'op' must be allocate or release, got {str(op)[:20]!r}")
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"old journal {path} line {number} cannot be read ({type(exc).__name__}: "
                f"{str(exc)[:120]}); fix or delete that line, then start again (nothing was "
                "imported)"
            ) from None
    return out


def _check_allocate(pod: dict, placement: dict) -> None:
    if not isinstance(pod["name"], str) or not pod["name"]:
        raise TypeError("'pod.name' must be a pod name")
    for key in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli"):
        if not isinstance(pod[key], int):
            raise TypeError(f"'pod.{key}' must be an integer")
    if not isinstance(placement["node"], int):
        raise TypeError("'placement.node' must be a node index")
    gpus, milli = placement["gpus"], placement["milli"]
    if not (isinstance(gpus, list) and isinstance(milli, list) and len(gpus) == len(milli)):
        raise TypeError("'placement.gpus' and 'placement.milli' must be lists of one length")
    if not all(isinstance(x, int) for x in (*gpus, *milli)):
        raise TypeError("'placement.gpus' and 'placement.milli' must hold integers")
