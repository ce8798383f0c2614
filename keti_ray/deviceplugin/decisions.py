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
import threading
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
    mechanism: str | None = None  # mps, green or exclusive (None: not given)

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


def decisions_in(
    pods: Iterable[dict[str, Any]],
    node: str,
    memo: dict[tuple[str, str], list[Decision]] | None = None,
) -> list[Decision]:
    """Every GPU container of the Pending pods on `node` that carries a decision, oldest first.

    A pod whose annotation cannot be decoded, or names another node, is logged and skipped
    (it gets the fallback, which is counted).  `memo` keeps each pod version's decisions
    (by uid and resourceVersion), so a lookup decodes only pods that changed."""
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
        version = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
        if memo is not None and version[0] and version in memo:
            out.extend(memo[version])
            continue
        found = _pod_decisions(meta, spec, text, node)
        if memo is not None and version[0]:
            if len(memo) > 4096:
                memo.clear()
            memo[version] = found
        out.extend(found)
    # stable: the containers of one pod keep their order (kubelet allocates them in order)
    return sorted(out, key=lambda d: (d.created, d.namespace, d.pod))


def _pod_decisions(
    meta: dict[str, Any], spec: dict[str, Any], text: str, node: str
) -> list[Decision]:
    """One pod's decisions, per GPU container (init containers first, as kubelet runs them)."""
    key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
    try:
        alloc = decode_allocation(text)
    except ValueError as e:
        log.warning("pod %s: %s annotation ignored: %s", key, ANN_ALLOCATION, e)
        return []
    if alloc.node != node:
        log.warning("pod %s is bound to %s but its decision names node %s", key, node, alloc.node)
        return []
    out: list[Decision] = []
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
                mechanism=str(ca.mechanism),
            )
        )
    return out


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


class PodWatcher:
    """This node's pods, kept by list-then-watch (the `kubernetes` client's watch), so a
    lookup in Allocate's path costs no API call: a watch from the list's resourceVersion,
    bookmarks, a relist on 410 Gone, backoff on errors.  `refresh()` is a fresh LIST, for a
    lookup that found nothing (the watch may lag the binding that kubelet has already seen).
    """

    def __init__(self, source: ApiServerPods, watch_timeout_s: int = 300) -> None:
        self.source = source
        self.watch_timeout_s = watch_timeout_s
        self._pods: dict[str, dict[str, Any]] = {}
        self._rv: str | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.synced = threading.Event()
        self.relists = 0
        self.errors = 0
        self._thread: threading.Thread | None = None

    @staticmethod
    def _key(pod: dict[str, Any]) -> str:
        m = pod.get("metadata") or {}
        return m.get("uid") or f"{m.get('namespace')}/{m.get('name')}"

    def refresh(self) -> list[dict[str, Any]]:
        """A fresh LIST replaces the cache; DecisionError when the API server is away."""
        from kubernetes import client

        try:
            resp = client.CoreV1Api(self.source.api_client).list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.source.node}",
                _preload_content=False,
                _request_timeout=self.source.timeout_s,
            )
            body = json.loads(resp.data)
        except Exception as e:
            raise DecisionError(f"listing pods on {self.source.node} failed: {e}") from e
        items = list(body.get("items") or [])
        with self._lock:
            self._pods = {self._key(p): p for p in items}
            self._rv = (body.get("metadata") or {}).get("resourceVersion")
        self.relists += 1
        self.synced.set()
        return items

    def pods(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._pods.values())

    def _watch_once(self) -> None:
        from kubernetes import client, watch

        w = watch.Watch()
        stream = w.stream(
            client.CoreV1Api(self.source.api_client).list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={self.source.node}",
            resource_version=self._rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s,
            _preload_content=False,
        )
        try:
            for ev in stream:
                if self._halt.is_set():
                    return
                kind, obj = ev["type"], ev["raw_object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:  # the watch expired: relist
                        self._rv = None
                        return
                    raise DecisionError(f"watch error: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                with self._lock:
                    if kind in ("ADDED", "MODIFIED"):
                        self._pods[self._key(obj)] = obj
                    elif kind == "DELETED":
                        self._pods.pop(self._key(obj), None)
                    if rv:
                        self._rv = rv
        finally:
            w.stop()

    def _loop(self) -> None:
        backoff = 0.2
        while not self._halt.is_set():
            try:
                if self._rv is None:
                    self.refresh()
                self._watch_once()
                backoff = 0.2
            except Exception as e:  # API server away or the stream broke: back off, relist
                self.errors += 1
                log.debug("pod watch on %s: %s", self.source.node, e)
                self._rv = None
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def start(self) -> PodWatcher:
        self._thread = threading.Thread(target=self._loop, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        # the stream ends at its timeout or the next event; the thread is a daemon


class DecisionFinder:
    """The decision for the container kubelet is admitting now, or None.

    `list_pods` answers from a cache (PodWatcher.pods) or the API server; `refresh`, when
    given, is asked once more before the answer is "no decision" (the cache may lag)."""

    def __init__(
        self,
        node: str,
        list_pods: Callable[[], list[dict[str, Any]]],
        held: Callable[[], set[tuple[str, str]]],
        refresh: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.node = node
        self.list_pods = list_pods
        self.held = held  # (pod key, container) pairs that already hold devices
        self.refresh = refresh
        self.refreshes = 0
        self._memo: dict[tuple[str, str], list[Decision]] = {}

    def _pick(self, pods: list[dict[str, Any]], units: int, held) -> Decision | None:
        for d in decisions_in(pods, self.node, self._memo):
            if (d.pod_key, d.container) in held:
                continue
            if d.units == units:
                return d
        return None

    def find(self, units: int) -> Decision | None:
        """The oldest not-yet-allocated container asking for `units`; DecisionError when the
        API server cannot be asked."""
        held = self.held()
        d = self._pick(self.list_pods(), units, held)
        if d is None and self.refresh is not None:
            self.refreshes += 1
            d = self._pick(self.refresh(), units, held)
        return d


def watched_finder(
    node: str, source: ApiServerPods, wait_sync_s: float = 5.0
) -> tuple[DecisionFinder, PodWatcher]:
    """A DecisionFinder on a started PodWatcher (falls back to a LIST on a miss)."""
    watcher = PodWatcher(source).start()
    watcher.synced.wait(wait_sync_s)
    return DecisionFinder(node, watcher.pods, lambda: set(), refresh=watcher.refresh), watcher
