"""Allocator events to the telemetry store, off the request path.

A decision only `offer`s its event to a bounded queue (never blocks; a full queue drops the
event and counts it). A background thread takes events in batches, hands them to the
TelemetryStore (fsync'd log) and turns the log into Parquet now and then. Nothing here runs
under the service's lock, and a telemetry failure never fails a booking.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from keti_ray.telemetry import TelemetryStore

log = logging.getLogger("keti_ray.booking.events")


class EventWriter:
    """Bounded queue + writer thread in front of a TelemetryStore (one record kind)."""

    def __init__(
        self,
        store: TelemetryStore,
        on_drop: Callable[[int], None],
        frag_pct: Callable[[], float] | None = None,
        maxsize: int = 10_000,
        batch: int = 512,
        period_s: float = 1.0,
        flush_s: float = 10.0,
        kind: str = "events",
    ) -> None:
        self.store = store
        self.kind = kind  # the telemetry store's record kind these rows are
        self.on_drop = on_drop
        self.frag_pct = frag_pct
        self.batch = batch
        self.period_s = period_s
        self.flush_s = flush_s
        self.queue: queue.Queue[dict] = queue.Queue(maxsize=maxsize)
        self.written = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()

    def offer_many(self, rows: list[dict]) -> int:
        """Queue rows; those that do not fit are dropped (and counted). Returns rows queued."""
        for i, row in enumerate(rows):
            if not self.offer(row):
                self.on_drop(len(rows) - i - 1)
                return i
        return len(rows)

    def offer(self, event: dict) -> bool:
        """Queue one event; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(event)
            return True
        except queue.Full:
            self.on_drop(1)
            return False

    def _take(self) -> list[dict]:
        try:
            events = [self.queue.get(timeout=self.period_s)]
        except queue.Empty:
            return []
        while len(events) < self.batch:
            try:
                events.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return events

    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set() or not self.queue.empty():
            events = self._take()
            try:
                if events:
                    if self.frag_pct is not None:
                        events[-1]["frag_pct"] = self.frag_pct()
                    self.written += self.store.push(self.kind, events)
                if time.monotonic() - last_flush > self.flush_s:
                    self.store.flush()
                    last_flush = time.monotonic()
            except Exception as exc:  # a full disk must not end the writer
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.exception("telemetry write failed (%d events lost)", len(events))
            for _ in events:
                self.queue.task_done()

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued event is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self.store.flush()
