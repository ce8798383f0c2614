"""kube-scheduler extender JSON (k8s.io/kube-scheduler/extender/v1) <-> keti-ray pod requests.

kube-scheduler sends ExtenderArgs {Pod, Nodes | NodeNames} and reads ExtenderFilterResult
{NodeNames | Nodes, FailedNodes, Error} and HostPriorityList [{Host, Score}] (0-10). Go's JSON
decoder matches keys case-insensitively, so keys are read in any case and written as the Go
field names.
"""

from __future__ import annotations

from typing import Any

from kubernetes.utils.quantity import parse_quantity

from keti_ray.cluster import ModelError, PodRequest
from keti_ray.constants import GPU_RESOURCE, GPU_UNITS_PER_DEVICE

MAX_EXTENDER_PRIORITY = 10


class ExtenderError(ValueError):
    """ExtenderArgs that cannot be read; the message names the field."""


def _get(obj: dict, key: str, default: Any = None) -> Any:
    """A key of a JSON object, matched case-insensitively as Go's decoder does."""
    if not isinstance(obj, dict):
        return default
    lowered = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return default


def node_names(args: dict) -> tuple[list[str], bool]:
    """Candidate node names, and whether they came as full Node objects (Nodes.items)."""
    names = _get(args, "NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ExtenderError("NodeNames must be a list of node names")
        return names, False
    nodes = _get(args, "Nodes")
    items = _get(nodes, "items") if nodes is not None else None
    if not isinstance(items, list):
        raise ExtenderError("ExtenderArgs needs NodeNames or Nodes.items")
    names = [_get(_get(n, "metadata", {}), "name") for n in items]
    if not all(isinstance(n, str) and n for n in names):
        raise ExtenderError("Nodes.items[].metadata.name must be a node name")
    return names, True


def pod_request(args: dict) -> PodRequest:
    """The keti-ray request of ExtenderArgs.Pod: summed container requests (limits if unset)."""
    pod = _get(args, "Pod")
    if not isinstance(pod, dict):
        raise ExtenderError("ExtenderArgs.Pod must be a Pod object")
    meta = _get(pod, "metadata", {}) or {}
    name = _get(meta, "name")
    if not isinstance(name, str) or not name:
        raise ExtenderError("Pod.metadata.name is required")
    namespace = _get(meta, "namespace") or "default"
    cpu = memory = units = 0
    containers = _get(_get(pod, "spec", {}), "containers", []) or []
    for c in containers:
        resources = _get(c, "resources", {}) or {}
        requests = dict(_get(resources, "limits", {}) or {})
        requests.update(_get(resources, "requests", {}) or {})
        try:
            cpu += int(parse_quantity(requests.get("cpu", 0)) * 1000)
            memory += int(parse_quantity(requests.get("memory", 0)) / (1024 * 1024))
            units += int(parse_quantity(requests.get(GPU_RESOURCE, 0)))
        except ValueError as exc:
            raise ExtenderError(f"Pod.spec.containers[].resources: {exc}") from None
    if units > GPU_UNITS_PER_DEVICE and units % GPU_UNITS_PER_DEVICE:
        raise ExtenderError(
            f"{GPU_RESOURCE} above {GPU_UNITS_PER_DEVICE} must be a multiple of "
            f"{GPU_UNITS_PER_DEVICE} (whole GPUs), got {units}"
        )
    if units == 0:
        num, milli = 0, 0
    elif units <= GPU_UNITS_PER_DEVICE:
        num, milli = 1, units * 1000 // GPU_UNITS_PER_DEVICE
    else:
        num, milli = units // GPU_UNITS_PER_DEVICE, 1000
    try:
        return PodRequest(f"{namespace}/{name}", cpu, memory, num, milli)
    except ModelError as exc:
        raise ExtenderError(str(exc)) from None


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
