"""Kubernetes Node and Pod objects (as the API server sends them, JSON dicts) -> keti-ray terms.

Why here: the watcher, the extender's bind and the tests read the same fields the same way.
A node gives its GPUs from what the node agent publishes (CONTRACTS §3: label
`keti.re.kr/gpu-model`, annotations `keti.re.kr/gpu-uuids` in index order,
`keti.re.kr/gpu-sm-count`, `keti.re.kr/gpu-memory-mib`) and from allocatable
`keti.re.kr/gpu-pct` (100 units per healthy GPU, from the device plugin). A pod's GPU request
is read per container, as kubelet allocates devices per container.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from keti_ray.cluster import MAX_GPUS_PER_NODE, ModelError, NodeSpec, PodRequest
from keti_ray.constants import (
    ANN_GPU_MEMORY_MIB,
    ANN_GPU_SM_COUNT,
    ANN_GPU_UUIDS,
    GPU_RESOURCE,
    GPU_UNITS_PER_DEVICE,
    LABEL_GPU_MODEL,
)
from keti_ray.shares import MILLI_PER_GPU, units_to_milli

TERMINAL_PHASES = ("Succeeded", "Failed")
MIB = 1024 * 1024


class ObjectError(ValueError):
    """An object whose keti-ray fields cannot be read; the message names the field."""


def _quantity(value: Any, where: str) -> float:
    try:
        return float(parse_quantity(value))
    except (ValueError, TypeError):
        raise ObjectError(f"{where}: {value!r} is not a Kubernetes quantity") from None


def _uniform_int(text: str | None, where: str) -> int | None:
    """A per-GPU number the node agent publishes: one value, or a comma list in index order
    when the GPUs differ (then None: not one number for the node)."""
    if text in (None, ""):
        return None
    try:
        values = {int(v) for v in str(text).split(",")}
    except ValueError:
        raise ObjectError(f"{where}: {text!r} is not an integer or a comma list of them") from None
    return values.pop() if len(values) == 1 else None


@dataclass(frozen=True)
class GpuNode:
    """A node as the allocator models it. `spec` is None when the node cannot be modelled
    (no or inconsistent GPU annotations); `reason` says why, or, for a modelled node, what is
    degraded."""

    name: str
    spec: NodeSpec | None
    uuids: tuple[str, ...]
    sm_count: int | None
    memory_mib: int | None
    healthy_gpus: int
    reason: str | None = None


def gpu_node(node: dict) -> GpuNode | None:
    """The node's GPUs, or None for a node that carries no keti.re.kr GPU at all."""
    meta = node.get("metadata") or {}
    name = meta.get("name", "")
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    alloc = (node.get("status") or {}).get("allocatable") or {}
    if GPU_RESOURCE not in alloc and ANN_GPU_UUIDS not in ann:
        return None
    uuids = tuple(u.strip() for u in (ann.get(ANN_GPU_UUIDS) or "").split(",") if u.strip())
    try:
        units = int(
            _quantity(alloc.get(GPU_RESOURCE, 0), f"node {name} allocatable {GPU_RESOURCE}")
        )
        sm_count = _uniform_int(ann.get(ANN_GPU_SM_COUNT), f"annotation {ANN_GPU_SM_COUNT}")
        memory_mib = _uniform_int(ann.get(ANN_GPU_MEMORY_MIB), f"annotation {ANN_GPU_MEMORY_MIB}")
        cpu_milli = int(_quantity(alloc.get("cpu", 0), f"node {name} allocatable cpu") * 1000)
        mem_mib = int(_quantity(alloc.get("memory", 0), f"node {name} allocatable memory") / MIB)
    except (ObjectError, ValueError) as exc:
        return GpuNode(name, None, uuids, None, None, 0, f"unreadable: {exc}")
    healthy = units // GPU_UNITS_PER_DEVICE

    def unusable(reason: str) -> GpuNode:
        return GpuNode(name, None, uuids, sm_count, memory_mib, healthy, reason)

    if not uuids:
        return unusable(f"the node agent has not published annotation {ANN_GPU_UUIDS}")
    if len(set(uuids)) != len(uuids):
        return unusable(f"annotation {ANN_GPU_UUIDS} lists a GPU twice")
    if len(uuids) > MAX_GPUS_PER_NODE:
        return unusable(f"{len(uuids)} GPUs; the model holds at most {MAX_GPUS_PER_NODE} per node")
    if healthy > len(uuids):
        return unusable(
            f"allocatable {GPU_RESOURCE} {units} is more than the {len(uuids)} GPUs in "
            f"{ANN_GPU_UUIDS}"
        )
    reason = None
    if healthy < len(uuids):
        # A GPU the plugin reports unhealthy, or the plugin not registered (yet, or while it
        # restarts): kube-scheduler's own fit check holds pods to the allocatable units. The
        # model keeps every published GPU so that bookings on the healthy ones stay; which GPU
        # is unhealthy is not published (kuberay/README.md, "What is not modelled").
        reason = (
            f"{len(uuids) - healthy} of {len(uuids)} GPUs not allocatable ({GPU_RESOURCE} {units})"
        )
    try:
        spec = NodeSpec(name, cpu_milli, mem_mib, len(uuids), labels.get(LABEL_GPU_MODEL, ""))
    except ModelError as exc:
        return unusable(str(exc))
    return GpuNode(name, spec, uuids, sm_count, memory_mib, healthy, reason)


@dataclass(frozen=True)
class ContainerGpu:
    """One container's keti.re.kr/gpu-pct request, as GPUs and the milli share of each."""

    name: str
    units: int
    num_gpu: int
    milli: int
    cpu_milli: int
    memory_mib: int


@dataclass(frozen=True)
class GpuPod:
    """A pod that asks for keti.re.kr/gpu-pct in at least one container."""

    namespace: str
    name: str
    uid: str
    node: str  # "" while unbound
    phase: str
    deleting: bool
    containers: tuple[ContainerGpu, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def booking_keys(self) -> dict[str, str]:
        """Container name -> booking key. A pod with one GPU container is booked as
        `namespace/name`; with several, each as `namespace/name/container` (kubelet
        allocates devices per container, so each gets its own GPUs and share)."""
        if len(self.containers) == 1:
            return {self.containers[0].name: self.key}
        return {c.name: f"{self.key}/{c.name}" for c in self.containers}

    def requests(self) -> dict[str, PodRequest]:
        """Booking key -> the model's request for that container."""
        keys = self.booking_keys()
        return {
            keys[c.name]: PodRequest(keys[c.name], c.cpu_milli, c.memory_mib, c.num_gpu, c.milli)
            for c in self.containers
        }


def container_gpu(container: dict, where: str) -> ContainerGpu | None:
    """A container's GPU request (requests, or limits when requests are unset, as the API
    server defaults them for extended resources), or None without one."""
    resources = container.get("resources") or {}
    req = dict(resources.get("limits") or {})
    req.update(resources.get("requests") or {})
    if GPU_RESOURCE not in req:
        return None
    name = container.get("name", "")
    units_f = _quantity(req[GPU_RESOURCE], f"{where}.containers[{name}] {GPU_RESOURCE}")
    units = int(units_f)
    if units != units_f or units <= 0:
        raise ObjectError(
            f"{where}.containers[{name}] {GPU_RESOURCE} must be a positive integer, got "
            f"{req[GPU_RESOURCE]!r}"
        )
    if units > GPU_UNITS_PER_DEVICE and units % GPU_UNITS_PER_DEVICE:
        raise ObjectError(
            f"{where}.containers[{name}] {GPU_RESOURCE} above {GPU_UNITS_PER_DEVICE} must be a "
            f"multiple of {GPU_UNITS_PER_DEVICE} (whole GPUs), got {units}"
        )
    if units <= GPU_UNITS_PER_DEVICE:
        num, milli = 1, units_to_milli(units)
    else:
        num, milli = units // GPU_UNITS_PER_DEVICE, MILLI_PER_GPU
    cpu = int(_quantity(req.get("cpu", 0), f"{where}.containers[{name}] cpu") * 1000)
    memory = int(_quantity(req.get("memory", 0), f"{where}.containers[{name}] memory") / MIB)
    return ContainerGpu(name, units, num, milli, cpu, memory)


def gpu_pod(pod: dict) -> GpuPod | None:
    """The pod's per-container GPU requests, or None for a pod without any (ObjectError
    for one whose request cannot be read). Init containers are not booked."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    where = f"pod {meta.get('namespace', 'default')}/{meta.get('name', '')}"
    containers = []
    extra_cpu = extra_mem = 0
    for c in spec.get("containers") or []:
        gpu = container_gpu(c, where)
        if gpu is not None:
            containers.append(gpu)
            continue
        req = (c.get("resources") or {}).get("requests") or {}
        extra_cpu += int(_quantity(req.get("cpu", 0), f"{where} cpu") * 1000)
        extra_mem += int(_quantity(req.get("memory", 0), f"{where} memory") / MIB)
    if not containers:
        return None
    first = containers[0]
    # the non-GPU containers' CPU and memory go with the first GPU container's booking
    containers[0] = ContainerGpu(
        first.name,
        first.units,
        first.num_gpu,
        first.milli,
        first.cpu_milli + extra_cpu,
        first.memory_mib + extra_mem,
    )
    return GpuPod(
        meta.get("namespace") or "default",
        meta.get("name", ""),
        meta.get("uid", ""),
        spec.get("nodeName") or "",
        (pod.get("status") or {}).get("phase", ""),
        bool(meta.get("deletionTimestamp")),
        tuple(containers),
    )
