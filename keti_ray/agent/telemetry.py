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
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from keti_ray.constants import GPU_UNITS_PER_DEVICE
from keti_ray.deviceplugin.nvml import GpuBackend, GpuInfo

MPS_SERVER_COMM = "nvidia-cuda-mps-server"  # NVML lists the MPS server among compute processes

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


def sms_granted(status: dict[str, Any]) -> int | None:
    """The SMs the shim granted, from a status line (`sms_granted`; older lines: `sms`)."""
    for key in ("sms_granted", "sms"):
        v = status.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def innermost_pid(host_pid: int, proc: Path = Path("/proc")) -> int:
    """The PID a host process has in its own (container's) PID namespace: the last `NSpid`
    field of /proc/<pid>/status (the agent runs with hostPID); the host PID where unknown."""
    try:
        for line in (proc / str(host_pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return host_pid


def is_mps_server(host_pid: int, proc: Path = Path("/proc")) -> bool:
    try:
        return (proc / str(host_pid) / "comm").read_text().strip() == MPS_SERVER_COMM
    except OSError:
        return False


def shimless_pids(
    compute_pids: Iterable[int],
    status_lines: Iterable[dict[str, Any]],
    proc: Path = Path("/proc"),
) -> list[int]:
    """Host PIDs computing on a GPU for which no shim status line exists (no shim loaded).

    A status line names its process by the PID inside the pod's PID namespace, so each host
    PID is compared by its own and by its innermost PID.  MPS server processes are not pods.
    Not covered: two pods' processes with the same in-container PID on one GPU (one line
    vouches for both)."""
    shim = {int(s["pid"]) for s in status_lines if isinstance(s.get("pid"), int)}
    out = []
    for pid in compute_pids:
        if is_mps_server(pid, proc):
            continue
        if pid in shim or innermost_pid(pid, proc) in shim:
            continue
        out.append(pid)
    return sorted(out)


def parse_status_line(line: str) -> dict[str, Any] | None:
    """A shim status line: a JSON object, or `key=value` words; None for anything else.
    Unknown keys are kept as they are (the shim may add fields)."""
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


# what an "allocation" record carries: the booked share beside what the shim granted
ALLOCATION_FIELDS = (
    "gpu_uuid",
    "allocation_id",
    "pod",
    "units",
    "sm_pct_booked",
    "sms_booked",
    "sms_granted",
    "sms_device",
    "mechanism",
    "reported_by_shim",
)


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
        proc: Path = Path("/proc"),
        observers: list[Callable[[list[Record]], None]] | None = None,
    ) -> None:
        self.node = node
        self.proc = proc
        self.observers = list(observers or [])  # see every batch (the agent's metrics)
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
        partition = self.partition()
        statuses = read_status_dir(self.status_dir) if self.status_dir is not None else []
        shared = {r["gpu_uuid"] for r in partition if r["units"] < GPU_UNITS_PER_DEVICE}
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
            shimless: list[int] = []
            if g.uuid in shared:  # a shared GPU: every process on it must run under the shim
                try:
                    pids = self.backend.compute_pids(g.uuid)
                except Exception as e:
                    self.errors += 1
                    log.debug("compute processes of %s unreadable: %s", g.uuid, e)
                    pids = []
                mine = {r["allocation_id"] for r in partition if r["gpu_uuid"] == g.uuid}
                lines = [
                    st
                    for st in statuses
                    if st.get("gpu_uuid") == g.uuid or st.get("allocation_id") in mine
                ]
                shimless = shimless_pids(pids, lines, self.proc)
                if shimless:
                    log.warning(
                        "GPU %s is shared but PIDs %s run without the shim", g.uuid, shimless
                    )
            granted = [r["sms_granted"] for r in partition if r["gpu_uuid"] == g.uuid]
            out.append(
                {
                    **base,
                    "kind": "gpu",
                    "sm_pct": u.sm_pct,
                    "memory_pct": u.memory_pct,
                    "memory_used_mib": u.memory_used_mib,
                    "allocated_units": allocated,
                    "sms_device": g.sm_count or None,
                    "sms_granted": sum(x for x in granted if x) or None,
                    "shared": g.uuid in shared,
                    "shimless_pids": shimless,
                    "simulated": self.backend.simulated,
                }
            )
            for p in u.processes:
                out.append({**base, "kind": "process", **p})
        for row in partition:  # who holds which share, by which mechanism, and what it got
            out.append(
                {
                    "ts": now,
                    "node": self.node,
                    "kind": "allocation",
                    **{k: row.get(k) for k in ALLOCATION_FIELDS},
                }
            )
        for st in statuses:
            out.append({"ts": now, "node": self.node, "kind": "shim", **st})
        for observe in self.observers:
            try:
                observe(out)
            except Exception:
                log.exception("telemetry observer failed")
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
    or `alloc:<id>` where the shim has not named it, the SM percent the SHIM granted, i.e.
    its status line's SMs over the device's, and the mechanism).  Without a status line the
    grant is unknown (None): the booked share is not a grant.
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
                    "sm_pct_granted": _granted_pct(r),
                    "mechanism": r["mechanism"],
                }
            )
    return rows


def _granted_pct(r: Record) -> float | None:
    granted, device = r.get("sms_granted"), r.get("sms_device")
    if not granted or not device:
        return None
    return round(min(100.0, 100.0 * granted / device), 3)


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


class HttpSink:
    """POSTs batches to the allocator (`keti-ray agent --standalone`): JSON
    `{"node", "batch", "inventory", "records"}` with a bearer token, from a thread of its own.
    `batch` is an ID the batch keeps across retries, so the receiver can drop a duplicate
    (a batch whose answer was lost is sent again).

    The sampler never waits: batches queue in a bounded buffer (the oldest dropped, and
    counted, when the allocator is away), and one that fails is kept for the next try.
    """

    def __init__(
        self,
        url: str,
        node: str,
        inventory: list[dict[str, Any]] | None = None,
        token: str | None = None,
        max_batches: int = 120,
        timeout_s: float = 3.0,
        retry_s: float = 1.0,
    ) -> None:
        import collections

        self.url = url
        self.node = node
        self.inventory = inventory or []
        self.token = token
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self._queue: collections.deque[tuple[str, list[Record]]] = collections.deque(
            maxlen=max_batches
        )
        self._cv = threading.Condition()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry-push", daemon=True)
        self._thread.start()

    def put(self, records: list[Record]) -> None:
        with self._cv:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((uuid.uuid4().hex, records))
            self._cv.notify()

    def _post(self, batch: tuple[str, list[Record]]) -> None:
        import urllib.request

        batch_id, records = batch
        body = json.dumps(
            {"node": self.node, "batch": batch_id, "inventory": self.inventory, "records": records},
            default=str,
        ).encode()
        req = urllib.request.Request(self.url, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            if resp.status >= 300:
                raise OSError(f"{self.url} answered {resp.status}")

    def _loop(self) -> None:
        while not self._halt.is_set():
            with self._cv:
                while not self._queue and not self._halt.is_set():
                    self._cv.wait(0.5)
                if self._halt.is_set():
                    return
                batch = self._queue[0]
            try:
                self._post(batch)
            except Exception as e:  # allocator away: keep the batch, try again later
                self.failures += 1
                log.debug("telemetry push to %s failed: %s", self.url, e)
                self._halt.wait(self.retry_s)
                continue
            with self._cv:
                if self._queue and self._queue[0] is batch:
                    self._queue.popleft()
            self.sent += 1

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the queue is empty (True) or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cv:
                if not self._queue:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._halt.set()
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout=5)
