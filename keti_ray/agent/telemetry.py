"""Telemetry: sample each GPU (and its processes, and the shim's status lines) every second
and hand the records to a sink.

Records are flat dicts (JSON- and Parquet-friendly), one per GPU, per process and per shim
status line, each with `kind`, `ts` (Unix seconds) and `node`.  A sink is anything with
`put(records)`: a list in memory, a Ray queue, or a Ray actor (the cluster's telemetry store
or the `TelemetryCollector` below).  The sampler never blocks on its sink.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from keti_ray.constants import GPU_UNITS_PER_DEVICE
from keti_ray.deviceplugin.nvml import GpuBackend, GpuInfo

log = logging.getLogger(__name__)

Record = dict[str, Any]


class TelemetrySink(Protocol):
    """Where the sampler hands its records."""

    def put(self, records: list[Record]) -> None: ...


class ListSink:
    """Keeps records in memory (local runs, tests, `keti-ray agent --local`)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.records: list[Record] = []
        self.limit = limit
        self._lock = threading.Lock()

    def put(self, records: list[Record]) -> None:
        with self._lock:
            self.records.extend(records)
            del self.records[: max(0, len(self.records) - self.limit)]


class QueueSink:
    """Puts each batch on a `ray.util.queue.Queue` (dropping it when the queue is full)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def put(self, records: list[Record]) -> None:
        try:
            self.queue.put_nowait(records)
        except Exception:  # ray.util.queue.Full; never block the sampler
            log.debug("telemetry queue full; dropped %d records", len(records))


class ActorSink:
    """Calls `put.remote(records)` on a Ray actor, fire-and-forget."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def put(self, records: list[Record]) -> None:
        self.actor.put.remote(records)


class TelemetryCollector:
    """A Ray actor body that keeps the latest records from every node (wrap with ray.remote)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.sink = ListSink(limit)
        self.batches = 0

    def put(self, records: list[Record]) -> None:
        self.sink.put(records)
        self.batches += 1

    def records(self, kind: str | None = None, node: str | None = None) -> list[Record]:
        return [
            r
            for r in self.sink.records
            if (kind is None or r["kind"] == kind) and (node is None or r["node"] == node)
        ]

    def count_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.sink.records:
            out[r["node"]] = out.get(r["node"], 0) + 1
        return out


def parse_status_line(line: str) -> dict[str, Any] | None:
    """A shim status line: a JSON object, or `key=value` words; None for anything else."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            obj = json.loads(line)
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            return None
    fields: dict[str, Any] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if not sep:
            return None
        fields[key] = int(value) if value.lstrip("-").isdigit() else value
    return fields or None


def read_status_dir(status_dir: Path) -> list[dict[str, Any]]:
    """The latest status line of every file under `<status_dir>/<allocation-id>/`."""
    out = []
    if not status_dir.is_dir():
        return out
    for alloc_dir in status_dir.iterdir():
        if not alloc_dir.is_dir() or alloc_dir.name.startswith("."):
            continue  # `.allocations` holds the plugin's records, not shim status
        for f in alloc_dir.iterdir():
            try:
                lines = [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
            except OSError:
                continue
            if not lines:
                continue
            parsed = parse_status_line(lines[-1])
            if parsed is not None:
                out.append({"allocation_id": alloc_dir.name, "file": f.name, **parsed})
    return out


class TelemetrySampler:
    """Samples every `interval_s` in a thread and hands each batch to the sink."""

    def __init__(
        self,
        node: str,
        backend: GpuBackend | None,
        gpus: Iterable[GpuInfo],
        sink: TelemetrySink,
        *,
        status_dir: Path | None = None,
        units_by_gpu: Callable[[], dict[str, int]] | None = None,
        partition: Callable[[], list[dict[str, Any]]] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.node = node
        self.backend = backend
        self.gpus = list(gpus)
        self.sink = sink
        self.status_dir = status_dir
        self.units_by_gpu = units_by_gpu or (lambda: {})
        self.partition = partition or (lambda: [])
        self.interval_s = interval_s
        self.samples = 0
        self.errors = 0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> list[Record]:
        now = time.time()
        units = self.units_by_gpu()
        out: list[Record] = []
        for g in self.gpus:
            if self.backend is None:
                break
            allocated = units.get(g.uuid, 0)
            if self.backend.simulated:
                # the simulated model: a GPU is as busy as the share of it that is handed out
                self.backend.set_load(g.uuid, 100.0 * allocated / GPU_UNITS_PER_DEVICE)
            try:
                u = self.backend.utilisation(g.uuid)
            except Exception as e:  # a GPU that stops answering is a health matter, not ours
                self.errors += 1
                log.debug("utilisation of %s failed: %s", g.uuid, e)
                continue
            base = {"ts": now, "node": self.node, "gpu_uuid": g.uuid, "gpu_index": g.index}
            out.append(
                {
                    **base,
                    "kind": "gpu",
                    "sm_pct": u.sm_pct,
                    "memory_pct": u.memory_pct,
                    "memory_used_mib": u.memory_used_mib,
                    "allocated_units": allocated,
                    "simulated": self.backend.simulated,
                }
            )
            for p in u.processes:
                out.append({**base, "kind": "process", **p})
        for row in self.partition():  # who holds which share, by which mechanism
            out.append(
                {
                    "ts": now,
                    "node": self.node,
                    "kind": "allocation",
                    **{k: row[k] for k in ("gpu_uuid", "allocation_id", "pod", "units")},
                    "mechanism": row["mechanism"],
                }
            )
        if self.status_dir is not None:
            for s in read_status_dir(self.status_dir):
                out.append({"ts": now, "node": self.node, "kind": "shim", **s})
        return out

    def _loop(self) -> None:
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                batch = self.sample()
                if batch:
                    self.sink.put(batch)
                self.samples += 1
            except Exception:
                self.errors += 1
                log.exception("telemetry sample failed")
            self._halt.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def start(self) -> None:
        self._halt.clear()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class JsonlSink:
    """Appends each record as one JSON line to a file (`keti-ray agent --telemetry-out`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def put(self, records: list[Record]) -> None:
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
        with self._lock, self.path.open("a") as f:
            f.write(text)


def to_store_samples(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Sampler records -> rows of the telemetry store's `samples` kind.

    One row per GPU (its SM utilisation and memory), and one per allocation on it (the pod,
    or `alloc:<id>` where the shim has not named it, its granted SM percent and mechanism).
    """
    rows: list[dict[str, Any]] = []
    util = {}
    for r in records:
        if r["kind"] == "gpu":
            util[(r["node"], r["gpu_uuid"])] = r["sm_pct"]
            rows.append(
                {
                    "time": r["ts"],
                    "node": r["node"],
                    "gpu_uuid": r["gpu_uuid"],
                    "sm_util_pct": float(r["sm_pct"]),
                    "memory_used_mib": float(r["memory_used_mib"]),
                    "mechanism": None,
                }
            )
    for r in records:
        if r["kind"] == "allocation":
            rows.append(
                {
                    "time": r["ts"],
                    "node": r["node"],
                    "gpu_uuid": r["gpu_uuid"],
                    "pod": r["pod"] or f"alloc:{r['allocation_id']}",
                    "sm_pct_granted": float(min(max(r["units"], 1), GPU_UNITS_PER_DEVICE)),
                    "mechanism": r["mechanism"],
                }
            )
    return rows


class StoreSink:
    """Writes samples into the project's telemetry store (WAL + Parquet, keti_ray.telemetry).

    The store is opened on first use, in the process that samples (so the sink can be handed
    to a Ray actor); each node writes with its own writer name, so agents can share a root.
    """

    def __init__(self, root: str | Path, writer: str | None = None) -> None:
        self.root = str(root)
        self.writer = writer
        self._store = None

    def put(self, records: list[Record]) -> None:
        rows = to_store_samples(records)
        if not rows:
            return
        if self._store is None:
            from keti_ray.telemetry import TelemetryStore

            name = self.writer or "agent-" + re.sub(r"[^A-Za-z0-9_-]", "-", rows[0]["node"])
            self._store = TelemetryStore(self.root, writer=name[:80])
        self._store.push("samples", rows)

    def flush(self) -> None:
        if self._store is not None:
            self._store.flush()
