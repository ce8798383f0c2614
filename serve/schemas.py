"""Request bodies of the allocator API: strict, bounded, unknown fields refused, errors name
the field. Names follow Kubernetes: a pod name is a DNS-1123 subdomain, a namespace a
DNS-1123 label."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from keti_ray.booking import pod_key
from keti_ray.cluster import MAX_GPUS_PER_POD, MILLI_PER_GPU, PodRequest, pod_request_problems

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
POD_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?" + DNS1123_SUBDOMAIN[1:]
UID = r"^[A-Za-z0-9][-A-Za-z0-9]{0,63}$"
MAX_BATCH = 10_000
MAX_CPU_MILLI = 100_000_000  # 100,000 cores: far above any node
MAX_MEMORY_MIB = 1 << 32  # 4 PiB

PodName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
Namespace = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
NodeName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
Uid = Annotated[str, Field(pattern=UID)]
GpuModel = Annotated[
    str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
]


class PodIn(BaseModel):
    """One pod's request, in the openb trace's units."""

    model_config = ConfigDict(extra="forbid")

    name: PodName
    namespace: Namespace | None = None
    uid: Uid | None = None
    cpu_milli: Annotated[int, Field(strict=True, ge=0, le=MAX_CPU_MILLI)]
    memory_mib: Annotated[int, Field(strict=True, ge=0, le=MAX_MEMORY_MIB)]
    num_gpu: Annotated[int, Field(strict=True, ge=0, le=MAX_GPUS_PER_POD)] = 0
    gpu_milli: Annotated[int, Field(strict=True, ge=0, le=MILLI_PER_GPU)] = 0
    gpu_spec: (
        Annotated[list[GpuModel], Field(max_length=16)]
        | Annotated[str, Field(max_length=200)]
        | None
    ) = None

    @field_validator("gpu_spec")
    @classmethod
    def _split_spec(cls, value: list[str] | str | None) -> list[str]:
        if value is None:
            return []
        items = value.split("|") if isinstance(value, str) else value
        models = [s.strip() for s in items if s.strip()]
        if isinstance(value, str) and not all(len(m) <= 32 and m.isascii() for m in models):
            raise ValueError("gpu_spec: GPU model names of at most 32 ASCII characters")
        return models

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
        """The pod's identity in the allocator: `namespace/name` (namespace `default`)."""
        return pod_key(self.name, self.namespace)

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
    """Either `pod` (one decision) or `pods` (decided in order); `dry_run` books nothing;
    `node` restricts a single pod's choice to that node (what a bind does)."""

    model_config = ConfigDict(extra="forbid")

    pod: PodIn | None = None
    pods: Annotated[list[PodIn], Field(min_length=1, max_length=MAX_BATCH)] | None = None
    dry_run: Annotated[bool, Field(strict=True)] = False
    node: NodeName | None = None

    @model_validator(mode="after")
    def _one_form(self) -> AllocateIn:
        if (self.pod is None) == (self.pods is None):
            raise ValueError("give exactly one of 'pod' (an object) or 'pods' (a list)")
        if self.node is not None and self.pods is not None:
            raise ValueError("'node' goes with 'pod' (one decision), not with 'pods'")
        if self.pods is not None:
            keys = [p.key for p in self.pods]
            if len(set(keys)) != len(keys):
                dup = next(k for k in keys if keys.count(k) > 1)
                raise ValueError(f"pods: pod {dup[:80]!r} appears more than once")
        return self


class ReleaseIn(BaseModel):
    """`pod` is a name (namespace `default`) or `namespace/name`; `uid` releases only that
    incarnation of the pod."""

    model_config = ConfigDict(extra="forbid")

    pod: Annotated[str, Field(min_length=1, max_length=317, pattern=POD_KEY)]
    namespace: Namespace | None = None
    uid: Uid | None = None

    @model_validator(mode="after")
    def _one_namespace(self) -> ReleaseIn:
        if self.namespace and "/" in self.pod:
            raise ValueError("give the namespace in 'pod' or in 'namespace', not both")
        return self

    @property
    def key(self) -> str:
        return pod_key(self.pod, self.namespace)


# ---- POST /telemetry: what keti_ray/agent/telemetry.py's HttpSink sends ------------------------

MAX_RECORDS = 10_000  # a node samples a few dozen records a second; 1 MB bounds it as well
MAX_INVENTORY = 64  # GPUs on one node
BATCH_ID = r"^[A-Za-z0-9][-A-Za-z0-9_]{0,63}$"
Text = Annotated[str, Field(max_length=253)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class RecordIn(BaseModel):
    """A sampler record: `kind`, `ts`, `node`; fields of other kinds are kept as they are."""

    model_config = ConfigDict(extra="allow")

    kind: Annotated[str, Field(min_length=1, max_length=32)]
    ts: Finite
    node: NodeName


class GpuRecordIn(RecordIn):
    kind: Literal["gpu"]
    gpu_uuid: Annotated[str, Field(min_length=1, max_length=128)]
    sm_pct: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    memory_used_mib: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class AllocationRecordIn(RecordIn):
    kind: Literal["allocation"]
    gpu_uuid: Annotated[str, Field(min_length=1, max_length=128)]
    allocation_id: Text | None = None
    pod: Text | None = None
    sms_granted: Annotated[int, Field(ge=0, le=100_000)] | None = None
    sms_device: Annotated[int, Field(ge=0, le=100_000)] | None = None
    mechanism: Annotated[str, Field(max_length=32)] | None = None


def _record_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in ("gpu", "allocation") else "other"


Record = Annotated[
    Annotated[GpuRecordIn, Tag("gpu")]
    | Annotated[AllocationRecordIn, Tag("allocation")]
    | Annotated[RecordIn, Tag("other")],
    Discriminator(_record_kind),
]


class GpuInventoryIn(BaseModel):
    """One GPU of the node (keti_ray/deviceplugin/nvml.py's GpuInfo)."""

    model_config = ConfigDict(extra="allow")

    index: Annotated[int, Field(ge=0, le=MAX_INVENTORY)]
    uuid: Annotated[str, Field(min_length=1, max_length=128)]
    name: Text
    sm_count: Annotated[int, Field(ge=0, le=100_000)]
    memory_mib: Annotated[int, Field(ge=0)]


class TelemetryIn(BaseModel):
    """One batch of a node's telemetry; `batch` keeps its ID when the agent re-sends it."""

    model_config = ConfigDict(extra="forbid")

    node: NodeName
    batch: Annotated[str, Field(pattern=BATCH_ID)]
    inventory: Annotated[list[GpuInventoryIn], Field(max_length=MAX_INVENTORY)] = []
    records: Annotated[list[Record], Field(max_length=MAX_RECORDS)]

    @model_validator(mode="after")
    def _one_node(self) -> TelemetryIn:
        for i, r in enumerate(self.records):
            if r.node != self.node:
                raise ValueError(
                    f"records[{i}].node is {r.node[:63]!r}; a batch carries its own node's "
                    f"records only ({self.node[:63]!r})"
                )
        return self
