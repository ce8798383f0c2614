"""kube-scheduler extender JSON (k8s.io/kube-scheduler/extender/v1) <-> keti-ray pod requests.

kube-scheduler sends ExtenderArgs {Pod, Nodes | NodeNames} and reads ExtenderFilterResult
{NodeNames | Nodes, FailedNodes, Error} and HostPriorityList [{Host, Score}] (0-10). Go's JSON
decoder matches keys case-insensitively, so keys are read in any case and written as the Go
field names. Every value is type- and range-checked: bad input is an ExtenderError naming the
field (the routes answer 422), never an exception from deeper down.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from keti_ray.cluster import ModelError, PodRequest
from keti_ray.constants import GPU_RESOURCE, GPU_UNITS_PER_DEVICE
from serve.http import short
from serve.schemas import DNS1123_LABEL, DNS1123_SUBDOMAIN, MAX_CPU_MILLI, MAX_MEMORY_MIB, UID

MAX_EXTENDER_PRIORITY = 10
MAX_NODES = 10_000
MAX_CONTAINERS = 64
MAX_QUANTITY_CHARS = 64
MIB = 1024 * 1024


class ExtenderError(ValueError):
    """ExtenderArgs that cannot be read; `field` is the path of the offending value."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """A key of a JSON object, matched case-insensitively as Go's decoder does."""
    if not isinstance(obj, dict):
        return default
    lowered = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return default


def _object(value: Any, field: str, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ExtenderError(f"{field} must be an object", field)
    return value


def _name(value: Any, field: str, pattern: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise ExtenderError(f"{field} is required (a string)", field)
    if len(value) > max_len or not re.fullmatch(pattern, value):
        raise ExtenderError(
            f"{field} must be a DNS-1123 name (lowercase letters, digits, '-', at most "
            f"{max_len} characters), got {short(value)}",
            field,
        )
    return value


def node_names(args: Any) -> tuple[list[str], bool]:
    """Candidate node names, and whether they came as full Node objects (Nodes.items)."""
    _object(args, "ExtenderArgs", required=True)
    names = _get(args, "NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ExtenderError("NodeNames must be a list of node names", "NodeNames")
        as_nodes = False
    else:
        nodes = _get(args, "Nodes")
        items = _get(nodes, "items") if isinstance(nodes, dict) else None
        if not isinstance(items, list):
            raise ExtenderError("ExtenderArgs needs NodeNames or Nodes.items", "NodeNames")
        names = [_get(_get(n, "metadata"), "name") for n in items]
        if not all(isinstance(n, str) and n for n in names):
            raise ExtenderError(
                "Nodes.items[].metadata.name must be a node name", "Nodes.items.metadata.name"
            )
        as_nodes = True
    if len(names) > MAX_NODES:
        raise ExtenderError(f"at most {MAX_NODES} candidate nodes, got {len(names)}", "NodeNames")
    for n in names:
        if len(n) > 253:
            raise ExtenderError(f"node name longer than 253 characters: {short(n)}", "NodeNames")
    return names, as_nodes


def _quantity(value: Any, field: str) -> Decimal:
    """A Kubernetes quantity ("2", "500m", "4Gi", 2): finite, non-negative, short."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ExtenderError(f"{field} must be a quantity string like '2' or '4Gi'", field)
    if isinstance(value, str) and len(value) > MAX_QUANTITY_CHARS:
        raise ExtenderError(f"{field} is too long for a quantity: {short(value)}", field)
    try:
        q = parse_quantity(value)
    except (ValueError, InvalidOperation, TypeError, ArithmeticError):
        raise ExtenderError(f"{field} is not a quantity: {short(value)}", field) from None
    if not q.is_finite() or q < 0:
        raise ExtenderError(
            f"{field} must be a finite, non-negative quantity: {short(value)}", field
        )
    return q


def pod_identity(args: Any) -> tuple[str, str, str | None]:
    """(namespace, name, uid) of ExtenderArgs.Pod, each checked."""
    pod = _object(_get(args, "Pod"), "Pod", required=True)
    meta = _object(_get(pod, "metadata"), "Pod.metadata", required=True)
    name = _name(_get(meta, "name"), "Pod.metadata.name", DNS1123_SUBDOMAIN, 253)
    namespace = _get(meta, "namespace") or "default"
    namespace = _name(namespace, "Pod.metadata.namespace", DNS1123_LABEL, 63)
    uid = _get(meta, "uid")
    if uid is not None and (not isinstance(uid, str) or not re.fullmatch(UID, uid)):
        raise ExtenderError(
            f"Pod.metadata.uid must be a pod UID, got {short(uid)}", "Pod.metadata.uid"
        )
    return namespace, name, uid or None


def pod_request(args: Any) -> PodRequest:
    """The keti-ray request of ExtenderArgs.Pod: summed container requests (limits if unset)."""
    namespace, name, _ = pod_identity(args)
    pod = _get(args, "Pod")
    spec = _object(_get(pod, "spec"), "Pod.spec")
    containers = _get(spec, "containers")
    if containers is None:
        containers = []
    if not isinstance(containers, list) or len(containers) > MAX_CONTAINERS:
        raise ExtenderError(
            f"Pod.spec.containers must be a list of at most {MAX_CONTAINERS} containers",
            "Pod.spec.containers",
        )
    cpu = memory = units = Decimal(0)
    for i, c in enumerate(containers):
        where = f"Pod.spec.containers[{i}].resources"
        resources = _object(_get(_object(c, f"Pod.spec.containers[{i}]"), "resources"), where)
        limits = _object(_get(resources, "limits"), f"{where}.limits")
        requests = _object(_get(resources, "requests"), f"{where}.requests")
        merged = {**limits, **requests}
        cpu += _quantity(merged.get("cpu", 0), f"{where}.cpu")
        memory += _quantity(merged.get("memory", 0), f"{where}.memory")
        gpu = _quantity(merged.get(GPU_RESOURCE, 0), f"{where}.{GPU_RESOURCE}")
        if gpu != gpu.to_integral_value():
            raise ExtenderError(f"{where}.{GPU_RESOURCE} must be a whole number of units", where)
        units += gpu
    cpu_milli = int((cpu * 1000).to_integral_value(rounding="ROUND_CEILING"))
    memory_mib = int((memory / MIB).to_integral_value(rounding="ROUND_CEILING"))
    if cpu_milli > MAX_CPU_MILLI:
        raise ExtenderError(
            f"Pod cpu requests must be at most {MAX_CPU_MILLI // 1000} cores", "cpu"
        )
    if memory_mib > MAX_MEMORY_MIB:
        raise ExtenderError(f"Pod memory requests must be at most {MAX_MEMORY_MIB} MiB", "memory")
    units = int(units)
    if units > 8 * GPU_UNITS_PER_DEVICE:
        raise ExtenderError(
            f"{GPU_RESOURCE} must be at most {8 * GPU_UNITS_PER_DEVICE} (8 GPUs), got {units}",
            GPU_RESOURCE,
        )
    if units > GPU_UNITS_PER_DEVICE and units % GPU_UNITS_PER_DEVICE:
        raise ExtenderError(
            f"{GPU_RESOURCE} above {GPU_UNITS_PER_DEVICE} must be a multiple of "
            f"{GPU_UNITS_PER_DEVICE} (whole GPUs), got {units}",
            GPU_RESOURCE,
        )
    if units == 0:
        num, milli = 0, 0
    elif units <= GPU_UNITS_PER_DEVICE:
        num, milli = 1, units * 1000 // GPU_UNITS_PER_DEVICE
    else:
        num, milli = units // GPU_UNITS_PER_DEVICE, 1000
    try:
        return PodRequest(f"{namespace}/{name}", cpu_milli, memory_mib, num, milli)
    except ModelError as exc:
        raise ExtenderError(str(exc)[:200], exc.field or "Pod") from None


def filter_result(args: dict, ok: list[str], failed: dict[str, str], as_nodes: bool) -> dict:
    """ExtenderFilterResult in the form the request used (names, or the Node objects)."""
    result: dict[str, Any] = {"FailedNodes": failed, "Error": ""}
    if as_nodes:
        items = _get(_get(args, "Nodes"), "items")
        keep = set(ok)
        result["Nodes"] = {
            "items": [n for n in items if _get(_get(n, "metadata", {}), "name") in keep]
        }
    else:
        result["NodeNames"] = ok
    return result
