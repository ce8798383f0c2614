"""The booking store: the allocator's bookings in SQLite, crash-safe and keyed by identity.

Why SQLite: a booking acknowledged with 200 must survive any crash, and a crash mid-write must
never damage the bookings before it. SQLite in WAL mode with `synchronous=FULL` gives exactly
that (a commit is durable when COMMIT returns; a torn WAL frame is discarded on open), and a
transaction per decision (or per batch, with a savepoint per pod) means a failure after
deciding books nothing. A batch commits once: one fsync for the whole group.

A booking is keyed by pod identity (`namespace/name`, plus the pod UID where Kubernetes gives
one) and holds node NAMES and GPU UUIDS, never indices, so a changed node list cannot move a
booking onto the wrong node: bookings that no longer fit are set aside and reported.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
SQLITE_HEADER = b"SQLite format 3\x00"
LEGACY_SUFFIX = ".v0-journal"  # where an old JSON journal at the state path is moved to

# One entry per schema version: the statements that take a database from version i-1 to i.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE meta (
               key   TEXT PRIMARY KEY,
               value TEXT NOT NULL)""",
        """CREATE TABLE bookings (
               pod        TEXT PRIMARY KEY,          -- namespace/name
               uid        TEXT,                      -- Kubernetes pod UID, when known
               node       TEXT NOT NULL,             -- node name
               request    TEXT NOT NULL,             -- JSON: what the pod asked for
               gpus       TEXT NOT NULL,             -- JSON: [{"uuid": .., "milli": ..}]
               policy     TEXT NOT NULL,
               booked_at  REAL NOT NULL,
               set_aside  TEXT                       -- NULL = active, else why it is not
           )""",
    ),
    # Telemetry batch IDs a node agent pushed (POST /telemetry): a batch whose answer was
    # lost is sent again, and must be dropped even after the state actor restarts.
    2: (
        """CREATE TABLE telemetry_batches (
               batch        TEXT PRIMARY KEY,
               node         TEXT NOT NULL,
               received_at  REAL NOT NULL)""",
        "CREATE INDEX telemetry_batches_age ON telemetry_batches (received_at)",
    ),
}


class StoreError(RuntimeError):
    """The booking store cannot be opened or read; the message names the file and problem."""


class StoreUnavailable(RuntimeError):
    """A write to the booking store failed (disk full, I/O error): nothing was booked (503)."""


@dataclass(frozen=True)
class Booking:
    """One pod's booking as stored: identity, node name, GPU UUIDs and milli per GPU."""

    pod: str
    node: str
    request: dict[str, Any]
    gpus: tuple[tuple[str, int], ...]  # (uuid, milli)
    policy: str
    uid: str | None = None
    booked_at: float = field(default_factory=time.time)
    set_aside: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "uid": self.uid,
            "node": self.node,
            "gpus": [{"uuid": u, "milli": m} for u, m in self.gpus],
            "milli": [m for _, m in self.gpus],
            "policy": self.policy,
            "booked_at": self.booked_at,
            **({"set_aside": self.set_aside} if self.set_aside else {}),
        }


class BookingStore:
    """Bookings and the serving policy in one SQLite file (`None` = in memory, for tests and
    dry setups; same code path). Every use of the connection holds the store's own lock: the
    policy follower writes here from its own thread, and closing a connection that another
    thread is using crashes the process (sqlite3 with check_same_thread=False)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.RLock()
        self.path = Path(path) if path else None
        self.name = str(self.path) if self.path else ":memory:"
        self.legacy_journal: Path | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.legacy_journal = self._move_legacy_journal()
        try:
            self.conn = sqlite3.connect(
                self.name, isolation_level=None, check_same_thread=False, timeout=30
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            problem = self.conn.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {problem}")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(
                f"booking store {self.name} cannot be read ({type(exc).__name__}: {exc}); "
                "restore it from a backup or move it aside to start empty"
            ) from None
        # The one place a commit happens, so that a failing disk can be injected honestly.
        self._commit: Callable[[], None] = lambda: self.conn.execute("COMMIT")

    # ---- schema ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this keti-ray ({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target]:
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {target}")
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _move_legacy_journal(self) -> Path | None:
        """An old JSON-lines journal at the state path moves to PATH.v0-journal (kept) so the
        database can take its place; the service imports it once (see `import_done`)."""
        assert self.path is not None
        legacy = self.path.with_name(self.path.name + LEGACY_SUFFIX)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
            if header != SQLITE_HEADER and header.lstrip()[:1] == b"{":
                if legacy.exists():
                    raise StoreError(
                        f"booking store {self.path} holds a JSON journal and {legacy} exists "
                        "as well; keep one of them"
                    )
                os.replace(self.path, legacy)
                _fsync_dir(self.path.parent)
        return legacy if legacy.exists() else None

    # ---- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction; COMMIT (one fsync) on success. Any failure rolls everything back
        and raises StoreUnavailable, so the caller can answer 503 knowing nothing was kept."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"booking store {self.name}: begin failed ({exc})") from exc
            tx = Transaction(self.conn)
            try:
                yield tx
                self._commit()
            except BaseException as exc:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the failed COMMIT may already have rolled back
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(
                        f"booking store {self.name}: write failed ({exc}); nothing was booked"
                    ) from exc
                raise

    # ---- reads -------------------------------------------------------------------------------

    _COLUMNS = "pod, uid, node, request, gpus, policy, booked_at, set_aside"

    def bookings(self, include_set_aside: bool = False) -> list[Booking]:
        """Every booking in the order it was made (oldest first); unreadable rows come back
        set aside with the reason, never dropped silently."""
        where = "" if include_set_aside else "WHERE set_aside IS NULL"
        return self._rows(f"{where} ORDER BY rowid", ())

    def get(self, pod: str) -> Booking | None:
        rows = self._rows("WHERE pod = ?", (pod,))
        return rows[0] if rows else None

    def _rows(self, where: str, args: Sequence[Any]) -> list[Booking]:
        query = f"SELECT {self._COLUMNS} FROM bookings {where}"
        with self._lock:
            rows = self.conn.execute(query, args).fetchall()
        return [_parse_row(*row) for row in rows]

    def meta(self, key: str) -> Any:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def count(self) -> dict[str, int]:
        with self._lock:
            active, aside = self.conn.execute(
                "SELECT COUNT(*) FILTER (WHERE set_aside IS NULL), "
                "COUNT(*) FILTER (WHERE set_aside IS NOT NULL) FROM bookings"
            ).fetchone()
        return {"active": active, "set_aside": aside}

    def close(self) -> None:
        """Close once no other thread is inside a read or a transaction; a later use raises
        (StoreUnavailable from `transaction`, sqlite3.ProgrammingError from a read)."""
        with self._lock:
            self.conn.close()


class Transaction:
    """Writes inside one `BookingStore.transaction()`; `savepoint()` scopes one pod's writes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._n = 0

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """One pod's writes: undone alone if they fail, the rest of the batch goes on."""
        self._n += 1
        name = f"pod{self._n}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException as exc:
            if not self.conn.in_transaction:  # SQLite rolled back the whole transaction
                raise StoreUnavailable(
                    f"booking store: write failed ({exc}); nothing in this batch was booked"
                ) from exc
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")

    def put(self, booking: Booking) -> None:
        """Insert or replace the booking of `booking.pod` (a set-aside one is replaced)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO bookings "
            "(pod, uid, node, request, gpus, policy, booked_at, set_aside) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                booking.pod,
                booking.uid,
                booking.node,
                json.dumps(booking.request, sort_keys=True),
                json.dumps([{"uuid": u, "milli": m} for u, m in booking.gpus]),
                booking.policy,
                booking.booked_at,
                booking.set_aside,
            ),
        )

    def delete(self, pod: str) -> bool:
        return self.conn.execute("DELETE FROM bookings WHERE pod = ?", (pod,)).rowcount > 0

    def set_aside(self, pod: str, reason: str) -> None:
        self.conn.execute("UPDATE bookings SET set_aside = ? WHERE pod = ?", (reason, pod))

    def claim_batch(self, batch: str, node: str, at: float) -> bool:
        """Record a telemetry batch ID; False when it was seen already (a re-sent batch)."""
        return (
            self.conn.execute(
                "INSERT OR IGNORE INTO telemetry_batches (batch, node, received_at) "
                "VALUES (?, ?, ?)",
                (batch, node, at),
            ).rowcount
            > 0
        )

    def forget_batches(self, before: float) -> int:
        """Drop batch IDs received before `before` (no agent re-sends a batch that old)."""
        return self.conn.execute(
            "DELETE FROM telemetry_batches WHERE received_at < ?", (before,)
        ).rowcount

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )


def _parse_row(
    pod: str,
    uid: str | None,
    node: str,
    request: str,
    gpus: str,
    policy: str,
    booked_at: float,
    set_aside: str | None,
) -> Booking:
    """A stored row as a Booking; a row that cannot be read is set aside, with the reason."""
    try:
        req = json.loads(request)
        if not isinstance(req, dict):
            raise ValueError("request is not a JSON object")
        pairs = tuple((str(g["uuid"]), int(g["milli"])) for g in json.loads(gpus))
    except (ValueError, TypeError, KeyError) as exc:
        req, pairs = {}, ()
        set_aside = set_aside or f"unreadable row ({type(exc).__name__}: {str(exc)[:80]})"
    return Booking(pod, node, req, pairs, policy, uid, booked_at, set_aside)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
