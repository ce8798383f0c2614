"""SM telemetry and allocator events, stored as Parquet for calibration and retraining."""

from keti_ray.telemetry.schema import SCHEMA_VERSION, TelemetryError
from keti_ray.telemetry.store import TelemetryStore

__all__ = ["SCHEMA_VERSION", "TelemetryError", "TelemetryStore"]
