"""Node agents' telemetry pushes (POST /telemetry) into the telemetry store, each batch once.

A stand-alone agent (keti_ray/agent/standalone.py) re-sends a batch whose answer it did not get,
with the same batch ID. The ID is claimed in the booking store's SQLite (committed before the
answer), so a re-sent batch is dropped even after the state actor restarted. The rows go to
the telemetry store off the request path (booking/events.py's bounded queue): a full queue
drops rows and counts them (`keti_allocator_telemetry_dropped_total`), never blocks a push.
Not covered: rows queued but not yet logged when the process dies are lost (telemetry is
best effort; bookings are not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from keti_ray.agent.telemetry import to_store_samples
from keti_ray.booking.events import EventWriter
from keti_ray.booking.store import BookingStore
from keti_ray.telemetry import TelemetryError, TelemetryStore
from keti_ray.telemetry.schema import validate_row

KEEP_BATCH_IDS_S = 24 * 3600.0  # an agent holds at most minutes of batches; a day is ample
PRUNE_EVERY = 1000  # claims between two prunes of old IDs


class TelemetryIngest:
    """Claims batch IDs durably and queues the batch's samples for the telemetry store."""

    def __init__(
        self,
        store: BookingStore,
        telemetry: TelemetryStore | None,
        on_drop: Callable[[int], None],
        keep_s: float = KEEP_BATCH_IDS_S,
    ) -> None:
        self.store = store
        self.keep_s = keep_s
        self.writer = (
            EventWriter(telemetry, on_drop, kind="samples") if telemetry is not None else None
        )
        self.inventory: dict[str, list[dict[str, Any]]] = {}  # node -> its GPUs, last push
        self.batches = 0
        self.duplicates = 0
        self._claims = 0

    def push(
        self,
        node: str,
        batch: str,
        inventory: Sequence[dict[str, Any]],
        records: Sequence[dict[str, Any]],
    ) -> dict[str, Any]:
        """One pushed batch: {"duplicate": True} when seen before, else the rows queued.
        ValueError (naming the record) for a record the store's schema refuses; nothing is
        claimed then, so the agent may send a corrected batch under the same ID."""
        rows = to_store_samples(records)
        for i, row in enumerate(rows):
            try:
                validate_row("samples", row)
            except TelemetryError as exc:
                raise ValueError(f"records: sample {i} ({row.get('gpu_uuid')}): {exc}") from None
        now = time.time()
        with self.store.transaction() as tx:
            fresh = tx.claim_batch(batch, node, now)
            self._claims += 1
            if self._claims % PRUNE_EVERY == 0:
                tx.forget_batches(now - self.keep_s)
        if not fresh:
            self.duplicates += 1
            return {"node": node, "batch": batch, "duplicate": True, "queued": 0}
        self.batches += 1
        if inventory:
            self.inventory[node] = [dict(g) for g in inventory]
        queued = self.writer.offer_many(rows) if self.writer is not None else 0
        return {
            "node": node,
            "batch": batch,
            "duplicate": False,
            "records": len(records),
            "queued": queued,
            "stored": self.writer is not None,
        }

    def drain(self, timeout_s: float = 10.0) -> bool:
        return self.writer.drain(timeout_s) if self.writer is not None else True

    def status(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "duplicates": self.duplicates,
            "nodes": sorted(self.inventory),
            "written": self.writer.written if self.writer else 0,
            "errors": self.writer.errors if self.writer else 0,
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
