"""Request bodies of the allocator API: strict, unknown fields refused, errors name the field."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keti_ray.cluster import MAX_GPUS_PER_POD, MILLI_PER_GPU, PodRequest, pod_request_problems

NonNegative = Annotated[int, Field(strict=True, ge=0)]
MAX_BATCH = 10_000


class PodIn(BaseModel):
    """One pod's request, in the openb trace's units."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    ]
    namespace: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    cpu_milli: NonNegative
    memory_mib: NonNegative
    num_gpu: Annotated[int, Field(strict=True, ge=0, le=MAX_GPUS_PER_POD)] = 0
    gpu_milli: Annotated[int, Field(strict=True, ge=0, le=MILLI_PER_GPU)] = 0
    gpu_spec: list[str] | str | None = None

    @field_validator("gpu_spec")
    @classmethod
    def _split_spec(cls, value: list[str] | str | None) -> list[str]:
        if value is None:
            return []
        items = value.split("|") if isinstance(value, str) else value
        return [s.strip() for s in items if s.strip()]

    @model_validator(mode="after")
    def _rules(self) -> PodIn:
        problems = pod_request_problems(
            self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli
        )
        if problems:
            raise ValueError("; ".join(f"{field} {msg}" for field, msg in problems))
        return self

    @property
    def key(self) -> str:
        """The pod's identity in the allocator: `namespace/name`, or `name` alone."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def to_request(self) -> PodRequest:
        return PodRequest(
            name=self.key,
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
            num_gpu=self.num_gpu,
            gpu_milli=self.gpu_milli,
            gpu_spec=frozenset(self.gpu_spec or ()),
        )


class AllocateIn(BaseModel):
    """Either `pod` (one decision) or `pods` (decided in order); `dry_run` books nothing."""

    model_config = ConfigDict(extra="forbid")

    pod: PodIn | None = None
    pods: Annotated[list[PodIn], Field(min_length=1, max_length=MAX_BATCH)] | None = None
    dry_run: Annotated[bool, Field(strict=True)] = False

    @model_validator(mode="after")
    def _one_form(self) -> AllocateIn:
        if (self.pod is None) == (self.pods is None):
            raise ValueError("give exactly one of 'pod' (an object) or 'pods' (a list)")
        return self


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pod: Annotated[str, Field(min_length=1, max_length=320)]
