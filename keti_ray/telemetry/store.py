"""Durable telemetry store: a write-ahead log in front of Parquet files.

`push` validates a batch, appends it to the log and fsyncs before it returns: a row that was
acknowledged survives a crash. Each log record carries its CRC-32, so a record damaged in the
middle of the log is skipped (and counted) while every record after it is kept, and a torn
last record (a crash mid-write, never acknowledged) is cut off when the log is reopened, so
the next acknowledged record never lands on top of it.

`flush` moves the log aside (atomic rename), writes one Parquet file per (kind, date, node)
partition through a temporary file and a rename, and only then drops the moved log. File
names derive from the log's batch id, so a flush that died half way is redone on the next
start without duplicating rows. Partitions with many small files are compacted into one
(an intent file makes that crash-safe too). Readers use `pyarrow.dataset` with hive
partitioning.

Layout: <root>/<kind>/date=YYYY-MM-DD/node=<node>/part-<batch>.parquet, <root>/wal/.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
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

    def __init__(
        self,
        root: str | Path,
        flush_rows: int = 5000,
        writer: str = "main",
        compact_files: int = 16,
    ) -> None:
        if not writer.replace("-", "").replace("_", "").isalnum():
            raise TelemetryError(f"writer must be letters, digits, '-' or '_', got {writer!r}")
        self.root = Path(root)
        self.wal = self.root / "wal"
        self.wal.mkdir(parents=True, exist_ok=True)
        self.writer = writer
        self.current = self.wal / f"current-{writer}.jsonl"
        self.flush_rows = flush_rows
        self.compact_files = compact_files
        self._lock = threading.Lock()
        self._pending = 0
        self.bad_records = 0  # damaged log records skipped (the rows after them are kept)
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
        payload = "".join(_record({"k": kind, "r": r}) for r in clean)
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
            written = self._write_batch(moved, batch)
        self.compact()
        return written

    def _write_batch(self, log: Path, batch: str) -> int:
        groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for record in self._read_log(log):
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
        """Finish flushes and compactions that a crash interrupted, and cut a torn last
        record off the log; logged-but-unflushed rows stay logged."""
        for kind in self._kinds():
            for intent in (self.root / kind).glob("date=*/node=*/.compact-*.json"):
                _finish_compaction(intent)
        redone = 0
        for log in sorted(self.wal.glob(f"flushing-{self.writer}-*.jsonl")):
            redone += self._write_batch(log, log.stem.removeprefix("flushing-"))
        if self.current.exists():
            _cut_torn_tail(self.current)
            self._pending = sum(1 for _ in self._read_log(self.current))
        return redone

    def _kinds(self) -> list[str]:
        from keti_ray.telemetry.schema import SCHEMAS

        return list(SCHEMAS)

    # ---- compaction ------------------------------------------------------------------------

    def compact(self, kind: str | None = None) -> int:
        """Merge partitions holding `compact_files` or more files into one file each; returns
        how many files were merged. Crash-safe: an intent file names the sources before the
        merged file appears, and recovery finishes (or undoes) a compaction it finds."""
        merged = 0
        for k in [kind] if kind else self._kinds():
            for folder in sorted((self.root / k).glob("date=*/node=*")):
                with self._lock:
                    files = sorted(folder.glob("part-*.parquet"))
                    if len(files) < self.compact_files:
                        continue
                    merged += self._compact_folder(k, folder, files)
        return merged

    def _compact_folder(self, kind: str, folder: Path, files: list[Path]) -> int:
        batch = f"c-{self.writer}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        target = folder / f"part-{batch}.parquet"
        tmp = folder / f".part-{batch}.parquet.tmp"
        intent = folder / f".compact-{batch}.json"
        table = pa.concat_tables([pq.read_table(f, schema=schema_for(kind)) for f in files])
        intent.write_text(
            json.dumps({"target": target.name, "tmp": tmp.name, "sources": [f.name for f in files]})
        )
        with intent.open("rb") as handle:
            os.fsync(handle.fileno())
        pq.write_table(table, tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(folder)
        _finish_compaction(intent)
        return len(files)

    # ---- reading ---------------------------------------------------------------------------

    def read(self, kind: str, since: float | None = None) -> pa.Table:
        """Every row of `kind` (Parquet and still-logged rows), optionally from time `since`."""
        schema = schema_for(kind)
        folder = self.root / kind
        with self._lock:
            files = _live_files(folder)
            for path in files:
                version = int(
                    (pq.read_schema(path).metadata or {}).get(b"keti_ray.schema_version", b"1")
                )
                if version > SCHEMA_VERSION:
                    raise TelemetryError(
                        f"{path}: schema version {version} is newer than this reader "
                        f"({SCHEMA_VERSION})"
                    )
            logged = [
                r["r"]
                for log in sorted(self.wal.glob("*.jsonl"))
                for r in self._read_log(log)
                if r["k"] == kind
            ]
            flt = ds.field("time") >= since if since is not None else None
            table = schema.empty_table()
            if files:
                dataset = ds.dataset(
                    [str(f) for f in files],
                    schema=schema,
                    format="parquet",
                    partitioning="hive",
                    partition_base_dir=str(folder),
                )
                table = dataset.to_table(filter=flt)
        if logged:
            extra = pa.Table.from_pylist(logged, schema=schema)
            if flt is not None:
                extra = ds.dataset(extra).to_table(filter=flt)
            table = pa.concat_tables([table, extra])
        return table

    def count(self, kind: str) -> int:
        return self.read(kind).num_rows

    def _read_log(self, path: Path) -> Iterable[dict]:
        """Records of a log file. A torn last line (crash mid-write, never acknowledged) is
        skipped; a damaged line elsewhere is skipped and counted, and reading goes on."""
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return
                record = _parse_record(raw)
                if record is None:
                    self.bad_records += 1
                    continue
                yield record


def _record(obj: dict) -> str:
    """One log line: CRC-32 of the JSON text, a space, the JSON text."""
    text = json.dumps(obj, separators=(",", ":"))
    return f"{zlib.crc32(text.encode()):08x} {text}\n"


def _parse_record(raw: bytes) -> dict | None:
    line = raw.rstrip(b"\n")
    try:
        if line.startswith(b"{"):  # written before records carried a CRC
            record = json.loads(line)
        else:
            crc, _, text = line.partition(b" ")
            if int(crc, 16) != zlib.crc32(text):
                return None
            record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or "k" not in record or not isinstance(record.get("r"), dict):
        return None
    return record


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline: the next record must start on a fresh line."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


def _live_files(folder: Path) -> list[Path]:
    """Parquet files of a kind, without the sources of a compaction whose merged file exists."""
    files = set(folder.glob("date=*/node=*/part-*.parquet"))
    for intent in folder.glob("date=*/node=*/.compact-*.json"):
        try:
            plan = json.loads(intent.read_text())
        except (OSError, ValueError):
            continue
        if (intent.parent / plan["target"]).exists():
            files -= {intent.parent / name for name in plan["sources"]}
    return sorted(files)


def _finish_compaction(intent: Path) -> None:
    """Complete (merged file there: drop the sources) or undo (drop the temporary file)."""
    folder = intent.parent
    try:
        plan = json.loads(intent.read_text())
    except (OSError, ValueError):
        intent.unlink(missing_ok=True)  # torn before anything else was written
        return
    if (folder / plan["target"]).exists():
        for name in plan["sources"]:
            (folder / name).unlink(missing_ok=True)
    else:
        (folder / plan["tmp"]).unlink(missing_ok=True)
    _fsync_dir(folder)
    intent.unlink(missing_ok=True)
    _fsync_dir(folder)
