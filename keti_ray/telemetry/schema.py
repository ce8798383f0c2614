"""Telemetry record kinds and their Arrow schemas (versioned; readers check the version).

- `samples`: what node agents measure every second per GPU (and pod, where known).
- `events`: what the allocator decides (`allocate`, `release`), with the pod's shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1


class TelemetryError(ValueError):
    """A telemetry row that does not fit its schema; the message names the field."""


SAMPLES = pa.schema(
    [
        pa.field("time", pa.float64(), nullable=False),  # unix seconds
        pa.field("node", pa.string(), nullable=False),
        pa.field("gpu_uuid", pa.string(), nullable=False),
        pa.field("pod", pa.string()),
        pa.field("workload_class", pa.string()),
        pa.field("sm_pct_granted", pa.float64()),
        pa.field("sm_util_pct", pa.float64()),
        pa.field("memory_used_mib", pa.float64()),
        pa.field("throughput", pa.float64()),
        pa.field("mechanism", pa.string()),
    ],
    metadata={"keti_ray.schema_version": str(SCHEMA_VERSION), "kind": "samples"},
)

EVENTS = pa.schema(
    [
        pa.field("time", pa.float64(), nullable=False),
        pa.field("node", pa.string(), nullable=False),
        pa.field("op", pa.string(), nullable=False),  # allocate | release
        pa.field("pod", pa.string(), nullable=False),
        pa.field("policy", pa.string()),
        pa.field("cpu_milli", pa.int64()),
        pa.field("memory_mib", pa.int64()),
        pa.field("num_gpu", pa.int64()),
        pa.field("gpu_milli", pa.int64()),
        pa.field("gpu_spec", pa.string()),
        pa.field("decision_ms", pa.float64()),
        pa.field("unallocated_gpu_pct", pa.float64()),
        pa.field("frag_pct", pa.float64()),
    ],
    metadata={"keti_ray.schema_version": str(SCHEMA_VERSION), "kind": "events"},
)

SCHEMAS: dict[str, pa.Schema] = {"samples": SAMPLES, "events": EVENTS}
EVENT_OPS = ("allocate", "release")


def schema_for(kind: str) -> pa.Schema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise TelemetryError(f"kind {kind!r} is unknown; accepted: {', '.join(SCHEMAS)}") from None


def validate_row(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A clean copy of `row`, or TelemetryError naming the first bad field."""
    schema = schema_for(kind)
    unknown = set(row) - set(schema.names)
    if unknown:
        raise TelemetryError(
            f"{kind}: unknown field(s) {sorted(unknown)}; accepted: {schema.names}"
        )
    out: dict[str, Any] = {}
    for field in schema:
        value = row.get(field.name)
        if value is None:
            if not field.nullable:
                raise TelemetryError(f"{kind}: field {field.name!r} is required")
            out[field.name] = None
            continue
        if pa.types.is_string(field.type):
            if not isinstance(value, str):
                raise TelemetryError(
                    f"{kind}: field {field.name!r} must be a string, got {value!r}"
                )
        elif pa.types.is_integer(field.type):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TelemetryError(
                    f"{kind}: field {field.name!r} must be a non-negative integer, got {value!r}"
                )
        else:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise TelemetryError(
                    f"{kind}: field {field.name!r} must be a finite number, got {value!r}"
                )
            value = float(value)
        out[field.name] = value
    if kind == "events" and out["op"] not in EVENT_OPS:
        raise TelemetryError(f"events: field 'op' must be one of {EVENT_OPS}, got {out['op']!r}")
    if (
        kind == "samples"
        and out["sm_pct_granted"] is not None
        and not 0 < out["sm_pct_granted"] <= 100
    ):
        raise TelemetryError(
            f"samples: field 'sm_pct_granted' must be in (0, 100], got {out['sm_pct_granted']}"
        )
    return out
