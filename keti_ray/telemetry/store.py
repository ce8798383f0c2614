"""Durable telemetry store: a write-ahead log in front of Parquet files.

`push` validates a batch, appends it to the log and fsyncs before it returns: a row that was
acknowledged survives a crash. `flush` moves the log aside (atomic rename), writes one Parquet
file per (kind, date, node) partition through a temporary file and a rename, and only then
drops the moved log. File names derive from the log's batch id, so a flush that died half
way is simply redone on the next start without duplicating rows.

Layout: <root>/<kind>/date=YYYY-MM-DD/node=<node>/part-<batch>.parquet, <root>/wal/.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from keti_ray.telemetry.schema import SCHEMA_VERSION, TelemetryError, schema_for, validate_row


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TelemetryStore:
    """Thread-safe. Several processes may share a root if each has its own `writer` name
    (the allocator writes events, the telemetry sink writes node samples)."""

    def __init__(self, root: str | Path, flush_rows: int = 5000, writer: str = "main") -> None:
        if not writer.replace("-", "").replace("_", "").isalnum():
            raise TelemetryError(f"writer must be letters, digits, '-' or '_', got {writer!r}")
        self.root = Path(root)
        self.wal = self.root / "wal"
        self.wal.mkdir(parents=True, exist_ok=True)
        self.writer = writer
        self.current = self.wal / f"current-{writer}.jsonl"
        self.flush_rows = flush_rows
        self._lock = threading.Lock()
        self._pending = 0
        self.recovered_rows = self._recover()

    # ---- writing ---------------------------------------------------------------------------

    def push(self, kind: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Validate and durably log a batch (all or nothing); returns the rows acknowledged."""
        clean = []
        for i, row in enumerate(rows):
            try:
                clean.append(validate_row(kind, row))
            except TelemetryError as exc:
                raise TelemetryError(f"row {i}: {exc}") from None
        if not clean:
            return 0
        payload = "".join(json.dumps({"k": kind, "r": r}) + "\n" for r in clean)
        with self._lock:
            with self.current.open("a", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            self._pending += len(clean)
            should_flush = self._pending >= self.flush_rows
        if should_flush:
            self.flush()
        return len(clean)

    def flush(self) -> int:
        """Move logged rows into Parquet; returns how many rows were written."""
        with self._lock:
            if not self.current.exists() or self.current.stat().st_size == 0:
                return 0
            batch = f"{self.writer}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            moved = self.wal / f"flushing-{batch}.jsonl"
            os.replace(self.current, moved)
            _fsync_dir(self.wal)
            self._pending = 0
            return self._write_batch(moved, batch)

    def _write_batch(self, log: Path, batch: str) -> int:
        groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for record in _read_log(log):
            row = record["r"]
            day = datetime.fromtimestamp(row["time"], tz=UTC).date().isoformat()
            groups[(record["k"], day, row["node"])].append(row)
        written = 0
        for (kind, day, node), rows in groups.items():
            folder = self.root / kind / f"date={day}" / f"node={quote(node, safe='')}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"part-{batch}.parquet"
            tmp = folder / f".part-{batch}.parquet.tmp"
            table = pa.Table.from_pylist(rows, schema=schema_for(kind))
            pq.write_table(table, tmp)
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            _fsync_dir(folder)
            written += len(rows)
        log.unlink()
        _fsync_dir(self.wal)
        return written

    def _recover(self) -> int:
        """Finish flushes that a crash interrupted; logged-but-unflushed rows stay logged."""
        redone = 0
        for log in sorted(self.wal.glob(f"flushing-{self.writer}-*.jsonl")):
            redone += self._write_batch(log, log.stem.removeprefix("flushing-"))
        if self.current.exists():
            self._pending = sum(1 for _ in _read_log(self.current))
        return redone

    # ---- reading ---------------------------------------------------------------------------

    def read(self, kind: str, since: float | None = None) -> pa.Table:
        """Every row of `kind` (Parquet and still-logged rows), optionally from time `since`."""
        schema = schema_for(kind)
        tables = []
        for path in sorted((self.root / kind).glob("date=*/node=*/part-*.parquet")):
            table = pq.read_table(path, schema=schema)
            version = int(
                (pq.read_schema(path).metadata or {}).get(b"keti_ray.schema_version", b"1")
            )
            if version > SCHEMA_VERSION:
                raise TelemetryError(
                    f"{path}: schema version {version} is newer than this reader ({SCHEMA_VERSION})"
                )
            tables.append(table)
        with self._lock:
            logged = [
                r["r"]
                for log in sorted(self.wal.glob("*.jsonl"))
                for r in _read_log(log)
                if r["k"] == kind
            ]
        if logged:
            tables.append(pa.Table.from_pylist(logged, schema=schema))
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if since is not None:
            table = table.filter(pc.greater_equal(table["time"], since))
        return table

    def count(self, kind: str) -> int:
        return self.read(kind).num_rows


def _read_log(path: Path) -> Iterable[dict]:
    """Records of a log file; a torn last line (crash mid-write, never acknowledged) is skipped."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return
