"""Cluster state from the API server into the allocation service (CONTRACTS §4 facade).

The API server is the truth for what runs; the booking store for which GPU and share a pod
holds. So:
- nodes: the list and every change that alters a node's GPUs go to `replace_nodes`; bookings
  on a vanished node or GPU are set aside by the service and reported here;
- pods: a pod that is deleted, Succeeded or Failed releases its bookings (with its UID, so a
  new pod of the same name keeps its own); on every (re)list the store is reconciled against
  the bound pods (`reconcile`), and the pods this sync saw bound before that are gone from the
  new list are released (a watch gap, e.g. after a 410, loses no deletion);
- a periodic reconcile from the cache releases bookings whose bind never happened (the
  service keeps young ones: a bind may be under way).
Nodes are synced before pods, so that the service knows a pod's node when it is reconciled.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kubernetes import client

from keti_ray.cluster import NodeSpec
from keti_ray.k8s.objects import GpuNode, GpuPod, ObjectError, gpu_node, gpu_pod
from keti_ray.k8s.watch import ListWatch

log = logging.getLogger("keti_ray.k8s.sync")


class Facade(Protocol):
    """What the sync calls on the allocation service (CONTRACTS §4)."""

    def release(self, key: str, uid: str | None = None) -> bool: ...
    def bookings(self) -> list[dict]: ...
    def reconcile(self, live: Mapping[str, str]) -> dict: ...
    def replace_nodes(
        self, nodes: Sequence[NodeSpec], gpu_uuids: Mapping[str, Sequence[str]]
    ) -> dict: ...


def node_view(nodes: Mapping[str, GpuNode]) -> tuple[list[NodeSpec], dict[str, list[str]]]:
    """The modelled nodes (sorted by name) and their GPU UUIDs in index order."""
    usable = [n for _, n in sorted(nodes.items()) if n.spec is not None]
    return [n.spec for n in usable], {n.name: list(n.uuids) for n in usable}


def list_gpu_nodes(api: client.CoreV1Api) -> dict[str, GpuNode]:
    """One list of the nodes (for the service's first node list, before the watch starts)."""
    resp = api.list_node(_preload_content=False, _request_timeout=(5, 60))
    try:
        items = json.loads(resp.data).get("items") or []
    finally:
        resp.release_conn()
    out = {}
    for obj in items:
        node = gpu_node(obj)
        if node is not None:
            out[node.name] = node
    return out


class ClusterSync:
    """Two ListWatches (nodes, pods) feeding a facade; `status()` says what it saw."""

    def __init__(
        self,
        facade: Facade,
        api: client.CoreV1Api,
        watch_timeout_s: int = 300,
        resync_s: float = 30.0,
        backoff_s: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.facade = facade
        self.api = api
        self.resync_s = resync_s
        self.nodes: dict[str, GpuNode] = {}
        self.pods: dict[str, GpuPod] = {}  # pod key -> the pod, for GPU pods not finished
        self._modelled: tuple | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.last_nodes_report: dict | None = None
        self.last_reconcile: dict | None = None
        self.released: int = 0
        self.unreadable: dict[str, str] = {}
        self.node_watch = ListWatch(
            "nodes", api.list_node, self._nodes_listed, self._node_event,
            watch_timeout_s=watch_timeout_s, backoff_s=backoff_s,
        )  # fmt: skip
        self.pod_watch = ListWatch(
            "pods", api.list_pod_for_all_namespaces, self._pods_listed, self._pod_event,
            watch_timeout_s=watch_timeout_s, backoff_s=backoff_s,
        )  # fmt: skip
        self._resync = threading.Thread(target=self._resync_loop, name="k8s-resync", daemon=True)

    def start(self, nodes_first_s: float = 30.0) -> ClusterSync:
        self.node_watch.start()
        self.node_watch.wait_synced(nodes_first_s)
        self.pod_watch.start()
        self._resync.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.node_watch.stop()
        self.pod_watch.stop()

    def wait_synced(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        return self.node_watch.wait_synced(timeout) and self.pod_watch.wait_synced(
            max(0.0, end - time.monotonic())
        )

    # ---- nodes ---------------------------------------------------------------------------

    def _nodes_listed(self, items: list[dict], rv: str) -> None:
        with self._lock:
            nodes = {}
            for obj in items:
                node = gpu_node(obj)
                if node is not None:
                    nodes[node.name] = node
            self.nodes = nodes
            self._push_nodes(force=True)

    def _node_event(self, kind: str, obj: dict) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        with self._lock:
            if kind == "DELETED":
                self.nodes.pop(name, None)
            else:
                node = gpu_node(obj)
                if node is None:
                    self.nodes.pop(name, None)
                else:
                    self.nodes[name] = node
            self._push_nodes()

    def _push_nodes(self, force: bool = False) -> None:
        """replace_nodes when the modelled GPUs changed (node heartbeats change nothing)."""
        specs, uuids = node_view(self.nodes)
        modelled = (tuple(specs), tuple(sorted((k, tuple(v)) for k, v in uuids.items())))
        if not force and modelled == self._modelled:
            return
        report = self.facade.replace_nodes(specs, uuids)
        self._modelled = modelled
        self.last_nodes_report = {"at": time.time(), "nodes": len(specs), **(report or {})}
        aside = (report or {}).get("set_aside") or []
        for entry in aside:
            log.warning("booking set aside: %s", entry)

    # ---- pods ----------------------------------------------------------------------------

    def _read(self, obj: dict) -> GpuPod | None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        try:
            pod = gpu_pod(obj)
        except ObjectError as exc:
            self.unreadable[key] = str(exc)
            log.warning("%s", exc)
            return None
        self.unreadable.pop(key, None)
        return pod

    def _release(self, pod: GpuPod) -> None:
        for key in pod.booking_keys().values():
            if self.facade.release(key, pod.uid or None):
                self.released += 1

    def _pods_listed(self, items: list[dict], rv: str) -> None:
        with self._lock:
            pods: dict[str, GpuPod] = {}
            finished: list[GpuPod] = []
            for obj in items:
                pod = self._read(obj)
                if pod is None:
                    continue
                if pod.terminal:
                    finished.append(pod)
                else:
                    pods[pod.key] = pod
            for key, old in self.pods.items():
                new = pods.get(key)
                if old.node and (new is None or new.uid != old.uid):
                    self._release(old)  # deleted while no watch was open
            for pod in finished:
                self._release(pod)
            self.pods = pods
            self._release_vanished(pods)
            self._reconcile()

    def _release_vanished(self, pods: Mapping[str, GpuPod]) -> None:
        """Bookings whose pod is not in the new list (or is another incarnation of it): the
        pod is read once more, and released if it is really gone. This covers pods deleted
        while no watch was open and never seen here (the allocator was down), without
        waiting for the service's reconcile grace; a pod created after the list (a bind under
        way) is found by the read and kept."""
        for booking in self.facade.bookings():
            key, uid = booking["pod"], booking.get("uid")
            pod_key = "/".join(key.split("/")[:2])
            listed = pods.get(pod_key)
            if listed is not None and (not uid or listed.uid == uid):
                continue
            if self._gone(pod_key, uid) and self.facade.release(key, uid):
                self.released += 1
                log.info("released %s: its pod is gone", key)

    def _gone(self, pod_key: str, uid: str | None) -> bool:
        namespace, _, name = pod_key.partition("/")
        try:
            resp = self.api.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=(5, 30)
            )
            obj = json.loads(resp.data)
        except client.ApiException as exc:
            return exc.status == 404
        except Exception:  # cannot tell: keep it (the next relist or reconcile decides)
            return False
        pod = self._read(obj)
        return pod is None or pod.terminal or bool(uid and pod.uid != uid)

    def _pod_event(self, kind: str, obj: dict) -> None:
        with self._lock:
            pod = self._read(obj)
            if pod is None:
                return
            if kind == "DELETED" or pod.terminal:
                self._release(pod)
                if self.pods.get(pod.key, pod).uid == pod.uid:
                    self.pods.pop(pod.key, None)
                return
            self.pods[pod.key] = pod

    def live(self) -> dict[str, str]:
        """Booking key -> node, for every bound GPU pod that has not finished."""
        with self._lock:
            return {
                key: pod.node
                for pod in self.pods.values()
                if pod.node
                for key in pod.booking_keys().values()
            }

    def _reconcile(self) -> None:
        report = self.facade.reconcile(self.live())
        self.last_reconcile = {"at": time.time(), **(report or {})}
        if report and (report.get("unknown") or report.get("mismatched")):
            log.warning(
                "pods bound but not booked: %s; bound elsewhere than booked: %s",
                report.get("unknown"),
                report.get("mismatched"),
            )

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_s):
            try:
                with self._lock:
                    if self.pod_watch.stats.synced.is_set():
                        self._reconcile()
            except Exception as exc:  # the service is restarting: the next round retries
                log.warning("periodic reconcile failed: %s", exc)

    # ---- report --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "nodes": {
                    n.name: {
                        "modelled": n.spec is not None,
                        "gpus": len(n.uuids),
                        "allocatable_gpus": n.healthy_gpus,
                        **({"reason": n.reason} if n.reason else {}),
                    }
                    for n in self.nodes.values()
                },
                "pods_tracked": len(self.pods),
                "released": self.released,
                "unreadable_pods": dict(self.unreadable),
                "last_nodes_report": self.last_nodes_report,
                "last_reconcile": self.last_reconcile,
                "watch": {
                    "nodes": self.node_watch.stats.as_dict(),
                    "pods": self.pod_watch.stats.as_dict(),
                },
            }
