"""The live typical-pod mix: FGD's typical pods from the allocator's own recent bookings.

Why: filter and prioritize score nodes by how much a placement fragments the GPUs for the pods
that usually come (FGD). On a cluster that mix is whatever the tenants run, not the default
list, so every `period_s` the allocator's `allocate` events of the last `window_s` (its
telemetry store) are calibrated into typical pods (keti_ray/calibration.py, the same
calibration the retrain uses) and handed to the service. Too few events keep the current mix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from keti_ray.calibration import CalibrationError, workload_mix
from keti_ray.fragmentation import TypicalPods
from keti_ray.telemetry import TelemetryStore

log = logging.getLogger("keti_ray.k8s.live_mix")

MIN_PODS = 20  # fewer allocate events than this say too little about the mix: keep the current


class LiveMix:
    """Periodic calibration of the typical pods; `apply(typical)` installs them."""

    def __init__(
        self,
        telemetry_dir: str | Path,
        apply: Callable[[TypicalPods], None],
        window_s: float = 3600.0,
        period_s: float = 300.0,
        min_pods: int = MIN_PODS,
    ) -> None:
        self.store = TelemetryStore(telemetry_dir, writer="live-mix")
        self.apply = apply
        self.window_s = window_s
        self.period_s = period_s
        self.min_pods = min_pods
        self.last: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-mix", daemon=True)

    def refresh(self, now: float | None = None) -> TypicalPods | None:
        """Calibrate once; the typical pods applied, or None (too few events: unchanged)."""
        since = (now or time.time()) - self.window_s
        try:
            mix = workload_mix(self.store.read("events"), since=since)
        except CalibrationError:
            return None
        if mix.pods_seen < self.min_pods:
            return None
        typical = mix.typical()
        self.apply(typical)
        self.last = {"at": time.time(), "pods_seen": mix.pods_seen, "shapes": len(typical.shapes)}
        return typical

    def start(self) -> LiveMix:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.refresh()
            except Exception as exc:  # a bad telemetry file must not stop the allocator
                log.warning("live typical-pod mix: %s", exc)
