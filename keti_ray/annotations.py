"""The allocator's decision as a pod annotation (`keti.re.kr/allocation`).

The extender writes it at bind and the GPU plugin honours it in GetPreferredAllocation and
Allocate, so the GPU is decided once, by the cluster-wide allocator. The plugin reads a value
any client with pod-patch rights could have written, so decoding is strict: unknown fields,
wrong types and out-of-range shares are refused with the field named.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keti_ray.constants import ANN_ALLOCATION
from keti_ray.shares import MILLI_PER_GPU, Mechanism, limit_pct, served_milli

__all__ = [
    "ANN_ALLOCATION",
    "Allocation",
    "ContainerAllocation",
    "decode_allocation",
    "encode_allocation",
]

MAX_ANNOTATION_BYTES = 16 * 1024
GpuUuid = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


class ContainerAllocation(BaseModel):
    """One container's GPUs: a share of one GPU (milli < 1000) or whole GPUs (milli 1000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: tuple[GpuUuid, ...] = Field(min_length=1, max_length=8)
    milli: int = Field(ge=1, le=MILLI_PER_GPU)
    sm_pct: int = Field(ge=1, le=100)
    sms: int | None = Field(default=None, ge=1)
    mechanism: Mechanism

    @model_validator(mode="after")
    def _consistent(self) -> ContainerAllocation:
        if served_milli(self.milli) != self.milli:
            raise ValueError(f"milli {self.milli} is not a served share (whole units, or 1000)")
        pct = limit_pct(self.milli)
        if (pct or 100) != self.sm_pct:
            raise ValueError(f"sm_pct {self.sm_pct} does not match milli {self.milli}")
        if self.milli < MILLI_PER_GPU and len(self.gpus) != 1:
            raise ValueError("a share below a whole GPU names exactly one GPU")
        if (self.milli == MILLI_PER_GPU) != (self.mechanism is Mechanism.EXCLUSIVE):
            raise ValueError("mechanism is 'exclusive' exactly for whole GPUs")
        if len(set(self.gpus)) != len(self.gpus):
            raise ValueError("gpus must not repeat")
        return self


class Allocation(BaseModel):
    """The decision for one pod: its node, the deciding policy, and per-container GPUs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str = Field(min_length=1, max_length=253)
    policy: str = Field(min_length=1, max_length=128)
    containers: dict[Annotated[str, Field(min_length=1, max_length=63)], ContainerAllocation] = (
        Field(min_length=1)
    )


def encode_allocation(allocation: Allocation) -> str:
    """The annotation value: compact JSON with sorted keys (stable across writers)."""
    return json.dumps(allocation.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def decode_allocation(text: str) -> Allocation:
    """Parse an annotation value; ValueError naming the first bad field and the accepted form."""
    if not isinstance(text, str):
        raise ValueError(f"{ANN_ALLOCATION}: expected a JSON string, got {type(text).__name__}")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ANNOTATION_BYTES:
        raise ValueError(f"{ANN_ALLOCATION}: longer than {MAX_ANNOTATION_BYTES} bytes")
    try:
        return Allocation.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(value)"
        raise ValueError(f"{ANN_ALLOCATION}: {where}: {first['msg']}") from None
