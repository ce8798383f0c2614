"""Which pod kubelet is admitting, and the allocator's decision for it (CONTRACTS §3).

Kubelet's Allocate and GetPreferredAllocation carry device IDs and a size, no pod.  The
PodResources API lists a pod only after its Allocate returned, so it cannot name the pod
being admitted.  So, as Aliyun's gpushare plugin and HAMi do, the plugin asks the API server
for the pods bound to this node that are still Pending and carry the decision annotation, drops
the containers that already hold devices (PodResources, and this plugin's own records), and
takes the oldest container whose request equals the size asked for: kubelet admits a node's
pods one at a time, oldest first, and a pod's containers in order.  The decision names the
GPU(s); the plugin's own choice is only the fallback when no decision exists.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from keti_ray.annotations import decode_allocation
from keti_ray.constants import ANN_ALLOCATION, GPU_RESOURCE

log = logging.getLogger(__name__)


class DecisionError(RuntimeError):
    """The API server could not be asked (the caller falls back and counts it)."""


@dataclass(frozen=True)
class Decision:
    """The allocator's choice for one container of one pod."""

    namespace: str
    pod: str
    uid: str
    container: str
    units: int  # the container's keti.re.kr/gpu-pct request
    gpus: tuple[str, ...]
    milli: int
    created: str  # the pod's creationTimestamp (RFC 3339: sorts as text)

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"


def _units(container: dict[str, Any]) -> int:
    from kubernetes.utils.quantity import parse_quantity

    res = container.get("resources") or {}
    value = (res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(
        GPU_RESOURCE
    )
    return int(parse_quantity(value)) if value is not None else 0


def decisions_in(pods: Iterable[dict[str, Any]], node: str) -> list[Decision]:
    """Every GPU container of the Pending pods on `node` that carries a decision, oldest first.

    A pod whose annotation cannot be decoded, or names another node, is logged and skipped
    (it gets the fallback, which is counted)."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
            continue
        if meta.get("deletionTimestamp") or spec.get("nodeName") != node:
            continue
        text = (meta.get("annotations") or {}).get(ANN_ALLOCATION)
        if text is None:
            continue
        key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        try:
            alloc = decode_allocation(text)
        except ValueError as e:
            log.warning("pod %s: %s annotation ignored: %s", key, ANN_ALLOCATION, e)
            continue
        if alloc.node != node:
            log.warning(
                "pod %s is bound to %s but its decision names node %s", key, node, alloc.node
            )
            continue
        for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
            units = _units(c)
            ca = alloc.containers.get(c.get("name", ""))
            if units <= 0 or ca is None:
                continue
            out.append(
                Decision(
                    namespace=meta.get("namespace", "default"),
                    pod=meta.get("name", ""),
                    uid=meta.get("uid", ""),
                    container=c["name"],
                    units=units,
                    gpus=tuple(ca.gpus),
                    milli=int(ca.milli),
                    created=str(meta.get("creationTimestamp") or ""),
                )
            )
    # stable: the containers of one pod keep their order (kubelet allocates them in order)
    return sorted(out, key=lambda d: (d.created, d.namespace, d.pod))


def api_client(host: str | None = None, token: str | None = None) -> Any:
    """A `kubernetes` ApiClient: in-cluster config (the DaemonSet's service account), else
    kubeconfig; `host` (and `token`) override them (tests: the API-server emulator)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if host is None:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    else:
        cfg.host = host
    if token:
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


class ApiServerPods:
    """Lists the pods bound to one node through the API server (`kubernetes` client)."""

    def __init__(self, node: str, api_client: Any, timeout_s: float = 2.0) -> None:
        self.node = node
        self.api_client = api_client
        self.timeout_s = timeout_s

    @classmethod
    def from_environment(
        cls, node: str, host: str | None = None, token: str | None = None, **kw: Any
    ) -> ApiServerPods:
        """The API client from `api_client()`; see there."""
        return cls(node, api_client(host, token), **kw)

    def pods(self) -> list[dict[str, Any]]:
        from kubernetes import client

        try:
            resp = client.CoreV1Api(self.api_client).list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node}",
                _preload_content=False,
                _request_timeout=self.timeout_s,
            )
            return list(json.loads(resp.data).get("items") or [])
        except Exception as e:  # urllib3 / ApiException / JSON: the caller falls back
            raise DecisionError(
                f"listing pods on {self.node} from the API server failed: {e}"
            ) from e

    def close(self) -> None:
        self.api_client.close()


class DecisionFinder:
    """The decision for the container kubelet is admitting now, or None."""

    def __init__(
        self,
        node: str,
        list_pods: Callable[[], list[dict[str, Any]]],
        held: Callable[[], set[tuple[str, str]]],
    ) -> None:
        self.node = node
        self.list_pods = list_pods
        self.held = held  # (pod key, container) pairs that already hold devices

    def find(self, units: int) -> Decision | None:
        """The oldest not-yet-allocated container asking for `units`; DecisionError when the
        API server cannot be asked."""
        held = self.held()
        for d in decisions_in(self.list_pods(), self.node):
            if (d.pod_key, d.container) in held:
                continue
            if d.units == units:
                return d
        return None
