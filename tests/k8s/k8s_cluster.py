"""Building blocks for the Kubernetes tests: GPU nodes and pods as the API server holds them,
RBAC rules from kuberay/10-rbac.yaml, and a kube-scheduler stand-in that calls the extender."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from kubernetes import client

from keti_ray.constants import (
    ANN_GPU_MEMORY_MIB,
    ANN_GPU_SM_COUNT,
    ANN_GPU_UUIDS,
    GPU_RESOURCE,
    LABEL_GPU_MODEL,
)
from keti_ray.manifests import find, load_all

SCHEDULER_NAME = "keti-scheduler"


def core_api(url: str, token: str | None = None) -> client.CoreV1Api:
    """A CoreV1Api on the emulator, as in-cluster config would build it (bearer token)."""
    cfg = client.Configuration()
    cfg.host = url
    if token:
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.CoreV1Api(client.ApiClient(cfg))


def cluster_role_rules(name: str) -> list[dict]:
    """The rules of a ClusterRole in kuberay/10-rbac.yaml (what the API server would enforce)."""
    return find(load_all(), "ClusterRole", name).doc["rules"]


def gpu_node_body(name: str, uuids: Sequence[str], model: str = "H200", sms: int = 132) -> dict:
    """A Node as kubelet registers it, with its GPUs as the node agent publishes them."""
    return {
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, LABEL_GPU_MODEL: model},
            "annotations": {
                ANN_GPU_UUIDS: ",".join(uuids),
                ANN_GPU_SM_COUNT: str(sms),
                ANN_GPU_MEMORY_MIB: "143771",
            },
        },
        "status": {
            "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: "800"},
            "allocatable": {
                "cpu": "64",
                "memory": "512Gi",
                "pods": "110",
                GPU_RESOURCE: str(100 * len(uuids)),
            },
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def gpu_pod_body(name: str, units: Sequence[int] | int, namespace: str = "default") -> dict:
    """A pod for keti-scheduler with one container per entry of `units` (gpu-pct each)."""
    units = [units] if isinstance(units, int) else list(units)
    containers = [
        {
            "name": "main" if len(units) == 1 else f"c{i}",
            "image": "keti-ray:0.1.0",
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"memory": "1Gi", GPU_RESOURCE: str(u)},
            },
        }
        for i, u in enumerate(units)
    ]
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"schedulerName": SCHEDULER_NAME, "containers": containers},
    }


def pod_units(pod: dict) -> int:
    return sum(
        int(((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE, 0))
        for c in pod["spec"]["containers"]
    )


@dataclass
class SchedulerStandIn:
    """What kube-scheduler does for a pod of this profile, as its extender client does it
    (k8s.io/kubernetes pkg/scheduler/framework/extender.go): its own resource fit first (the
    node's allocatable keti.re.kr/gpu-pct minus what bound pods request), then POST
    <urlPrefix>/filter with ExtenderArgs{Pod, Nodes} (nodeCacheCapable: false sends the Node
    objects), POST /prioritize, the highest weighted score wins (ties: first node), then POST
    /bind with ExtenderBindingArgs. `ignorable` ("scheduling should not fail when the extender
    returns an error or is not reachable", KubeSchedulerConfiguration docs): a filter or
    prioritize that errs or cannot be reached is skipped. For bind, this stand-in takes the
    default binder (pods/binding) only when the extender cannot be reached at all, and retries
    the pod after a bind that answered an error; kube-scheduler's exact choice there is not
    checked here (no kube-scheduler runs on these machines)."""

    api: client.CoreV1Api
    http: httpx.Client
    url_prefix: str
    ignorable: bool = True
    weight: int = 5
    calls: list[tuple[str, int]] = field(default_factory=list)
    default_binds: int = 0

    def _post(self, verb: str, body: dict) -> tuple[int, dict | list | None]:
        try:
            r = self.http.post(f"{self.url_prefix}/{verb}", json=body)
        except httpx.TransportError:
            self.calls.append((verb, 0))
            return 0, None
        self.calls.append((verb, r.status_code))
        return r.status_code, r.json() if r.content else None

    def _fits(self, pods: list[dict], nodes: list[dict], pod: dict) -> list[dict]:
        used: dict[str, int] = {}
        for p in pods:
            node = p["spec"].get("nodeName")
            if node and p["status"].get("phase") not in ("Succeeded", "Failed"):
                used[node] = used.get(node, 0) + pod_units(p)
        need = pod_units(pod)
        out = []
        for n in nodes:
            alloc = int(n["status"]["allocatable"].get(GPU_RESOURCE, 0))
            if alloc - used.get(n["metadata"]["name"], 0) >= need:
                out.append(n)
        return out

    def _list(self, fn) -> list[dict]:
        resp = fn(_preload_content=False)
        return json.loads(resp.data)["items"]

    def schedule_one(self, pod: dict) -> str | None:
        """One scheduling cycle; the node the pod was bound to, or None (it stays Pending)."""
        nodes = self._fits(
            self._list(self.api.list_pod_for_all_namespaces), self._list(self.api.list_node), pod
        )
        if not nodes:
            return None
        args = {"Pod": pod, "Nodes": {"items": nodes}}
        status, result = self._post("filter", args)
        if status == 200 and isinstance(result, dict) and not result.get("Error"):
            keep = {n["metadata"]["name"] for n in (result.get("Nodes") or {}).get("items", [])}
            nodes = [n for n in nodes if n["metadata"]["name"] in keep]
            if not nodes:
                return None
            status, scores = self._post("prioritize", {"Pod": pod, "Nodes": {"items": nodes}})
            if status == 200 and isinstance(scores, list):
                best = {s["Host"]: s["Score"] * self.weight for s in scores}
                nodes.sort(key=lambda n: -best.get(n["metadata"]["name"], 0))
        elif not self.ignorable:
            return None
        target = nodes[0]["metadata"]["name"]
        meta = pod["metadata"]
        status, result = self._post(
            "bind",
            {
                "PodName": meta["name"],
                "PodNamespace": meta["namespace"],
                "PodUID": meta["uid"],
                "Node": target,
            },
        )
        if status == 200 and isinstance(result, dict) and result.get("Error") == "":
            return target
        if status == 0 and self.ignorable:  # not reachable: the default binder binds
            self.default_binds += 1
            body = {
                "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"kind": "Node", "name": target},
            }
            self.api.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
            return target
        return None

    def pending(self) -> list[dict]:
        return [
            p
            for p in self._list(self.api.list_pod_for_all_namespaces)
            if p["spec"].get("schedulerName") == SCHEDULER_NAME
            and not p["spec"].get("nodeName")
            and not p["metadata"].get("deletionTimestamp")
        ]

    def run(self, timeout_s: float, until=None) -> int:
        """Schedule pending pods until none is left (or `until()`), retrying unschedulable
        ones with a short backoff; returns how many were bound."""
        bound = 0
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            pending = self.pending()
            if not pending or (until is not None and until()):
                break
            for pod in pending:
                if self.schedule_one(pod):
                    bound += 1
            time.sleep(0.05)
        return bound
