"""A kube-apiserver emulator for core/v1 nodes and pods, on real HTTP over loopback.

The official `kubernetes` Python client talks to it unchanged (`Configuration.host =
emu.url`). It follows the documented API behaviour
(https://kubernetes.io/docs/reference/using-api/api-concepts/ and the pod/binding registry):

- One cluster-wide resourceVersion counter (etcd's revision): every write gives the object a
  new `metadata.resourceVersion`, and a list carries the current one in `metadata`.
- **list** `GET /api/v1/nodes`, `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods`, with
  `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and
  `fieldSelector` (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`,
  `=`/`==`/`!=`). `resourceVersion` unset or "0" answers the current state; N newer than the
  current revision is 504 "Too large resource version"; `resourceVersionMatch=Exact` with an
  N older than the compacted revision is 410 Gone. `limit`/`continue` are ignored and the
  whole list is returned without `continue`, which the docs allow a server to do.
- **watch** (`watch=true`): from `resourceVersion` N, every change after N in order, then the
  live ones; N unset or "0" starts with a synthetic ADDED for every existing object. N older
  than the compacted revision gives a 200 stream with one `ERROR` event carrying a 410
  `Expired` Status ("too old resource version"), as the watch cache does; `compact()` lets a
  test drop history. `allowWatchBookmarks=true` adds `BOOKMARK` events (an object of the kind
  with only `metadata.resourceVersion`) every `bookmark_interval_s` and before a watch ends.
  `timeoutSeconds` ends the stream cleanly. The body is chunked, one JSON event per line.
  `hold_watches()`/`release_watches()` let a test stall every open watch (a partitioned
  watcher), so that changes and a compaction can happen behind it; `outage(s)` takes the
  server away (connections refused) and brings it back with its storage, as a restart.
- **get**, **create** (409 AlreadyExists; a pod is created Pending with its status cleared,
  a node keeps the status it was registered with; `generateName`), **update** (PUT;
  409 Conflict when `metadata.resourceVersion` is stale), **patch** with
  `application/strategic-merge-patch+json` (maps merge, `null` deletes, lists with a patch
  merge key merge by it: containers/initContainers/volumes/env/ports by name, conditions by
  type, tolerations and other lists replace; `$patch: replace|delete` in maps),
  `application/merge-patch+json` (RFC 7386) and `application/json-patch+json` (RFC 6902, with
  the `jsonpatch` library), **delete** (404 when absent).
- The `status` subresource: PUT/PATCH of `.../status` changes only `status`; PUT/PATCH of the
  main resource keeps the old `status`. A pod's spec is immutable through update/patch
  except `containers[*].image`, `initContainers[*].image` and `activeDeadlineSeconds`
  (422 Invalid naming the field), and `spec.nodeName` is set only by a binding.
- **pods/binding** `POST /api/v1/namespaces/{ns}/pods/{name}/binding` (and the older
  `POST /api/v1/namespaces/{ns}/bindings`): 404 when the pod is absent, 409 when it already
  has a node ("pod x is already assigned to node y") or is being deleted, 409 when
  `metadata.uid` is given and differs; sets `spec.nodeName`, copies the binding's annotations
  onto the pod, adds the condition PodScheduled=True, and answers 201 with a Status of
  `Success`, as the registry does (the Python client cannot read that into V1Binding:
  kubernetes-client/python#547, so callers use `_preload_content=False`).
- Graceful pod deletion: deleting a pod bound to a node with a grace period other than 0 sets
  `deletionTimestamp` (MODIFIED) and the object goes (DELETED) after `kubelet_grace_s`, when
  the emulated kubelet has stopped its containers; an unbound pod, or `gracePeriodSeconds=0`,
  is removed at once.
- Authorization (optional): `authorize(token, rules)` binds a bearer token to RBAC
  PolicyRules (apiGroups/resources/verbs/resourceNames, `*`, `pods/binding` style
  subresources); other requests with that token get 403 Forbidden. Every request is recorded
  in `calls` as (token, verb, resource, subresource, namespace, name), the verbs as RBAC
  names them (get, list, watch, create, update, patch, delete).
- Errors are `Status` objects with `reason`, `code` and a `message` naming the object.

What it does NOT cover: other kinds and API groups (events, leases, namespaces — any
namespace name is accepted), server-side apply (`application/apply-patch+yaml`), `dryRun`,
field managers and managedFields, admission (defaults, LimitRanges, quotas, PodSecurity),
schema validation of bodies beyond JSON, finalizers and ownerReferences garbage collection,
the pod GC controller (pods of a deleted node stay), the node lifecycle controller
(NotReady taints, evictions), `sendInitialEvents`/streaming lists, pagination, protobuf and
CBOR, TLS and authentication other than bearer-token matching, API priority and fairness,
and the watch cache's own delay (events are visible to a watch as soon as they are written).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonpatch

# Lists that strategic merge patch merges by key (from the Go types' patchMergeKey tags).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "addresses": "type",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "imagePullSecrets": "name",
}
MUTABLE_POD_SPEC = ("activeDeadlineSeconds",)
KINDS = {"nodes": "Node", "pods": "Pod"}


class ApiError(Exception):
    """An error answer: a Status object with this code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        out = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(resource: str, namespace: str | None, name: str) -> tuple[str, str, str]:
    return (resource, namespace or "", name)


# ---- patches -------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge patch for the built-in types (see MERGE_KEYS and the module docstring)."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "delete":
            return None
        body = {k: v for k, v in patch.items() if k != "$patch"}
        if directive == "replace":
            return copy.deepcopy(body)
        if directive is not None:
            raise ApiError(400, "BadRequest", f"unknown patch directive $patch: {directive!r}")
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in body.items():
            if v is None:
                out.pop(k, None)
                continue
            merged = strategic_merge_patch(out.get(k), v, k)
            if merged is None and isinstance(v, dict) and v.get("$patch") == "delete":
                out.pop(k, None)
            else:
                out[k] = merged
        return out
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        mk = MERGE_KEYS[key]
        out = [copy.deepcopy(x) for x in target]
        for item in patch:
            if not isinstance(item, dict) or mk not in item:
                raise ApiError(
                    400, "BadRequest", f"{key}: every element needs its merge key {mk!r}"
                )
            at = next((i for i, x in enumerate(out) if x.get(mk) == item[mk]), None)
            if item.get("$patch") == "delete":
                if at is not None:
                    out.pop(at)
            elif at is None:
                out.append({k: v for k, v in item.items() if k != "$patch"})
            else:
                out[at] = strategic_merge_patch(out[at], item)
        return out
    return copy.deepcopy(patch)


# ---- selectors ----------------------------------------------------------------------------

_SET_REQ = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def label_matcher(text: str | None):
    """A predicate over a labels dict for a labelSelector string (400 on bad syntax)."""
    if not text:
        return lambda labels: True
    reqs = []
    for part in _split_selector(text):
        m = re.match(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$", part)
        if m:
            k, op, v = m.groups()
            reqs.append((k, "ne" if op == "!=" else "eq", {v}))
            continue
        m = _SET_REQ.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, k, op, values = m.groups()
        if op:
            reqs.append((k, op, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            reqs.append((k, "notexists" if neg else "exists", set()))

    def match(labels: dict) -> bool:
        labels = labels or {}
        for k, op, vals in reqs:
            has = k in labels
            if op == "eq" and not (has and labels[k] in vals):
                return False
            if op == "ne" and has and labels[k] in vals:
                return False
            if op == "in" and not (has and labels[k] in vals):
                return False
            if op == "notin" and has and labels[k] in vals:
                return False
            if op == "exists" and not has:
                return False
            if op == "notexists" and has:
                return False
        return True

    return match


FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
}


def field_matcher(text: str | None, resource: str):
    if not text:
        return lambda obj: True
    reqs = []
    for part in text.split(","):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m or m.group(1) not in FIELDS:
            raise ApiError(
                400,
                "BadRequest",
                f'field label not supported: "{part.split("=")[0].strip("!")}"',
            )
        if resource == "nodes" and m.group(1) in ("spec.nodeName", "status.phase"):
            raise ApiError(400, "BadRequest", f'field label not supported: "{m.group(1)}"')
        reqs.append((FIELDS[m.group(1)], m.group(2) != "!=", m.group(3)))
    return lambda obj: all((get(obj) == v) == eq for get, eq, v in reqs)


# ---- the store -----------------------------------------------------------------------------


@dataclass
class Event:
    rv: int
    type: str
    resource: str
    obj: dict


@dataclass
class Call:
    token: str | None
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str


@dataclass
class Store:
    """Objects, the event history and the revision counter, under one condition variable."""

    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)
    history_rvs: list[int] = field(default_factory=list)
    rv: int = 1
    compacted: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def _write(self, type_: str, resource: str, obj: dict) -> dict:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append(Event(self.rv, type_, resource, copy.deepcopy(obj)))
        self.history_rvs.append(self.rv)
        self.cond.notify_all()
        return obj


class ApiServerEmulator:
    """The server. `start()`, `url`, `stop()`; test hooks: compact, authorize, calls."""

    def __init__(
        self,
        bookmark_interval_s: float = 60.0,
        kubelet_grace_s: float = 0.05,
        max_watch_s: float = 1800.0,
    ) -> None:
        self.store = Store()
        self.bookmark_interval_s = bookmark_interval_s
        self.kubelet_grace_s = kubelet_grace_s
        self.max_watch_s = max_watch_s
        self.calls: list[Call] = []
        self.rules: dict[str, list[dict]] = {}
        self.admin_tokens: set[str | None] = {None}
        self._stopping = threading.Event()
        self._delivering = threading.Event()
        self._delivering.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> ApiServerEmulator:
        emu = self

        class Handler(_Handler):
            server_emu = emu

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def outage(self, seconds: float) -> None:
        """The API server goes away for `seconds` (connections refused, open watches cut) and
        comes back on the same port with its storage (etcd) intact, as a restart does."""
        assert self._server is not None
        port = self._server.server_address[1]
        self._stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        time.sleep(seconds)
        self._stopping.clear()
        handler = self._server.RequestHandlerClass
        self._server = _Server(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---- test hooks -----------------------------------------------------------------------

    def compact(self, rv: int | None = None) -> int:
        """Drop history up to `rv` (default: now), as etcd compaction does; watches from an
        older revision then get 410 Gone. Returns the compacted revision."""
        with self.store.cond:
            target = self.store.rv if rv is None else rv
            cut = bisect_right(self.store.history_rvs, target)
            del self.store.history[:cut]
            del self.store.history_rvs[:cut]
            self.store.compacted = max(self.store.compacted, target)
            return self.store.compacted

    def hold_watches(self) -> None:
        """Open watches stop delivering (a slow or partitioned watcher) until
        `release_watches()`; with a `compact()` in between, they then get 410 Gone."""
        self._delivering.clear()

    def release_watches(self) -> None:
        self._delivering.set()

    def authorize(self, token: str, rules: list[dict]) -> None:
        """Requests bearing `token` are allowed only what these RBAC PolicyRules allow."""
        self.rules[token] = rules

    def allow_all(self, token: str | None) -> None:
        self.admin_tokens.add(token)

    def current_rv(self) -> int:
        with self.store.cond:
            return self.store.rv

    def object(self, resource: str, namespace: str | None, name: str) -> dict | None:
        with self.store.cond:
            obj = self.store.objects.get(_key(resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def calls_by(self, token: str) -> list[Call]:
        with self.store.cond:
            return [c for c in self.calls if c.token == token]

    # ---- authorization --------------------------------------------------------------------

    def check(self, call: Call) -> None:
        with self.store.cond:
            self.calls.append(call)
        if call.token in self.admin_tokens:
            return
        rules = self.rules.get(call.token or "")
        if rules is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        res = call.resource + (f"/{call.subresource}" if call.subresource else "")
        for rule in rules:
            groups = rule.get("apiGroups") or []
            resources = rule.get("resources") or []
            verbs = rule.get("verbs") or []
            names = rule.get("resourceNames") or []
            if not ("" in groups or "*" in groups):
                continue
            if not (res in resources or "*" in resources):
                continue
            if not (call.verb in verbs or "*" in verbs):
                continue
            if names and call.name not in names:
                continue
            return
        where = (
            f' in the namespace "{call.namespace}"' if call.namespace else " at the cluster scope"
        )
        subject = f"{call.resource}{'/' + call.subresource if call.subresource else ''}"
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} "{call.name}" is forbidden: User "token:{call.token}" cannot '
            f'{call.verb} resource "{subject}" in API group ""{where}',
        )

    # ---- operations (called with the request parsed) -------------------------------------

    def _get(self, resource: str, ns: str | None, name: str) -> dict:
        obj = self.store.objects.get(_key(resource, ns, name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{resource} "{name}" not found',
                {"name": name, "kind": resource},
            )
        return obj

    def get(self, resource: str, ns: str | None, name: str) -> dict:
        with self.store.cond:
            return copy.deepcopy(self._get(resource, ns, name))

    def list(self, resource: str, ns: str | None, query: dict[str, str]) -> dict:
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(query.get("fieldSelector"), resource)
        with self.store.cond:
            rv = query.get("resourceVersion")
            if rv and rv != "0":
                n = _parse_rv(rv)
                if n > self.store.rv:
                    raise ApiError(
                        504, "Timeout", f"Too large resource version: {n}, current: {self.store.rv}"
                    )
                if query.get("resourceVersionMatch") == "Exact" and n < self.store.compacted:
                    raise ApiError(
                        410, "Expired", f"too old resource version: {n} ({self.store.compacted})"
                    )
            items = [
                copy.deepcopy(o)
                for (r, ons, _), o in sorted(self.store.objects.items())
                if r == resource
                and (ns is None or ons == ns)
                and labels(o["metadata"].get("labels"))
                and fields(o)
            ]
            return {
                "kind": KINDS[resource] + "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": items,
            }

    def create(self, resource: str, ns: str | None, body: dict) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(
                422, "Invalid", f"{KINDS[resource]} is invalid: metadata.name: Required value"
            )
        if ns is not None:
            if meta.get("namespace") not in (None, ns):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            meta["namespace"] = ns
        obj["kind"], obj["apiVersion"] = KINDS[resource], "v1"
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("resourceVersion", None)
        meta.pop("deletionTimestamp", None)
        if resource == "pods":
            if not (obj.get("spec") or {}).get("containers"):
                raise ApiError(
                    422, "Invalid", f'Pod "{name}" is invalid: spec.containers: Required value'
                )
            obj["status"] = {"phase": "Pending", "qosClass": _qos(obj["spec"])}
        with self.store.cond:
            key = _key(resource, ns, name)
            if key in self.store.objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource} "{name}" already exists',
                    {"name": name, "kind": resource},
                )
            self.store.objects[key] = obj
            return copy.deepcopy(self.store._write("ADDED", resource, obj))

    def _replace(
        self, resource: str, ns: str | None, name: str, new: dict, sub: str, rv_check: str | None
    ) -> dict:
        """Common tail of update and patch (store lock held)."""
        old = self._get(resource, ns, name)
        if rv_check and rv_check != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the patched object must be a JSON object")
        if sub == "status":
            result = copy.deepcopy(old)
            result["status"] = copy.deepcopy(new.get("status") or {})
        else:
            result = copy.deepcopy(new)
            result["status"] = copy.deepcopy(old.get("status"))
            if result.get("status") is None:
                result.pop("status")
            meta = result.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(
                    422,
                    "Invalid",
                    f"metadata.name: Invalid value: {meta.get('name')!r}: field is immutable",
                )
            for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            if resource == "pods":
                _check_pod_spec_update(name, old.get("spec") or {}, result.get("spec") or {})
        result["kind"], result["apiVersion"] = KINDS[resource], "v1"
        if result == old:  # a no-op write does not bump the revision, as in etcd3's store
            return copy.deepcopy(old)
        self.store.objects[_key(resource, ns, name)] = result
        return copy.deepcopy(self.store._write("MODIFIED", resource, result))

    def update(self, resource: str, ns: str | None, name: str, body: dict, sub: str) -> dict:
        with self.store.cond:
            rv = (
                (body.get("metadata") or {}).get("resourceVersion")
                if isinstance(body, dict)
                else None
            )
            return self._replace(resource, ns, name, body, sub, rv)

    def patch(
        self, resource: str, ns: str | None, name: str, body: Any, ctype: str, sub: str
    ) -> dict:
        with self.store.cond:
            old = copy.deepcopy(self._get(resource, ns, name))
            if ctype == "application/json-patch+json":
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
                try:
                    new = jsonpatch.apply_patch(old, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiError(
                        422, "Invalid", f"the JSON patch cannot be applied: {exc}"
                    ) from None
            elif ctype == "application/merge-patch+json":
                new = merge_patch(old, body)
            elif ctype == "application/strategic-merge-patch+json":
                new = strategic_merge_patch(old, body)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: "
                    f"application/json-patch+json, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json (got {ctype!r})",
                )
            # A patch carrying metadata.resourceVersion is a precondition; otherwise it applies.
            return self._replace(resource, ns, name, new, sub, _patch_rv(body))

    def delete(self, resource: str, ns: str | None, name: str, grace: int | None) -> dict:
        with self.store.cond:
            obj = self._get(resource, ns, name)
            bound = resource == "pods" and (obj.get("spec") or {}).get("nodeName")
            if bound and grace != 0 and not obj["metadata"].get("deletionTimestamp"):
                grace_s = (
                    grace
                    if grace is not None
                    else (obj["spec"].get("terminationGracePeriodSeconds") or 30)
                )
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["deletionGracePeriodSeconds"] = grace_s
                out = copy.deepcopy(self.store._write("MODIFIED", resource, obj))
                timer = threading.Timer(
                    self.kubelet_grace_s,
                    self._finish_delete,
                    (resource, ns, name, obj["metadata"]["uid"]),
                )
                timer.daemon = True
                timer.start()
                return out
            if obj["metadata"].get("deletionTimestamp") and grace != 0:
                return copy.deepcopy(obj)
            return self._remove(resource, ns, name)

    def _remove(self, resource: str, ns: str | None, name: str) -> dict:
        obj = self.store.objects.pop(_key(resource, ns, name))
        return copy.deepcopy(self.store._write("DELETED", resource, obj))

    def _finish_delete(self, resource: str, ns: str | None, name: str, uid: str) -> None:
        """The kubelet's final delete (grace 0) once the containers have stopped."""
        with self.store.cond:
            obj = self.store.objects.get(_key(resource, ns, name))
            if obj is not None and obj["metadata"]["uid"] == uid:
                self._remove(resource, ns, name)

    def bind(self, ns: str, pod_name: str, body: dict) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a Binding object")
        target = body.get("target") or {}
        node = target.get("name")
        if not node:
            raise ApiError(422, "Invalid", "Binding.target.name: Required value")
        if target.get("kind") not in (None, "", "Node"):
            raise ApiError(
                422, "Invalid", f"Binding.target.kind: Unsupported value: {target.get('kind')!r}"
            )
        meta = body.get("metadata") or {}
        with self.store.cond:
            pod = self._get("pods", ns, pod_name)
            if meta.get("uid") and meta["uid"] != pod["metadata"]["uid"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on pods/binding "{pod_name}": Precondition '
                    f"failed: UID in precondition: {meta['uid']}, UID in object meta: "
                    f"{pod['metadata']['uid']}",
                )
            if pod["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on pods/binding "{pod_name}": pod '
                    f"{pod_name} is being deleted, cannot be assigned to a host",
                )
            current = pod["spec"].get("nodeName")
            if current:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on pods/binding "{pod_name}": pod '
                    f'{pod_name} is already assigned to node "{current}"',
                )
            pod["spec"]["nodeName"] = node
            if meta.get("annotations"):
                pod["metadata"].setdefault("annotations", {}).update(meta["annotations"])
            conditions = [
                c for c in pod["status"].get("conditions", []) if c.get("type") != "PodScheduled"
            ]
            conditions.append(
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
            )
            pod["status"]["conditions"] = conditions
            self.store._write("MODIFIED", "pods", pod)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    # ---- watch ----------------------------------------------------------------------------

    def watch_events(
        self, resource: str, ns: str | None, query: dict[str, str]
    ) -> Iterable[dict | None]:
        """The watch's events (None = nothing new for a while); bad selectors raise here,
        before the 200 goes out."""
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(query.get("fieldSelector"), resource)
        if query.get("resourceVersion"):
            _parse_rv(query["resourceVersion"])
        return self._watch_events(resource, ns, query, labels, fields)

    def _watch_events(self, resource, ns, query, labels, fields) -> Iterable[dict | None]:
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or self.max_watch_s)
        deadline = time.monotonic() + min(timeout, self.max_watch_s)
        rv_text = query.get("resourceVersion")

        def visible(obj: dict) -> bool:
            return (
                (ns is None or obj["metadata"].get("namespace", "") == ns)
                and labels(obj["metadata"].get("labels"))
                and fields(obj)
            )

        with self.store.cond:
            if not rv_text or rv_text == "0":
                start = self.store.rv
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (r, _, _), o in sorted(self.store.objects.items())
                    if r == resource and visible(o)
                ]
            else:
                start = _parse_rv(rv_text)
                initial = []
                if start < self.store.compacted:
                    expired = ApiError(
                        410,
                        "Expired",
                        f"too old resource version: {start} ({self.store.compacted})",
                    ).status()
                    yield {"type": "ERROR", "object": expired}
                    return
                if start > self.store.rv:
                    yield {
                        "type": "ERROR",
                        "object": ApiError(
                            504,
                            "Timeout",
                            f"Too large resource version: {start}, current: {self.store.rv}",
                        ).status(),
                    }
                    return
        yield from initial
        last = start
        next_bookmark = time.monotonic() + self.bookmark_interval_s
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if not self._delivering.is_set():
                self._delivering.wait(0.2)
                continue
            with self.store.cond:
                if last < self.store.compacted:
                    # history this watcher had not seen was compacted away under it
                    yield {
                        "type": "ERROR",
                        "object": ApiError(
                            410,
                            "Expired",
                            f"too old resource version: {last} ({self.store.compacted})",
                        ).status(),
                    }
                    return
                # A hold taken while this watcher was between the check above and here, or
                # waiting below, holds it too: a held watcher is sent nothing.
                pending = []
                if self._delivering.is_set():
                    pending = self.store.history[bisect_right(self.store.history_rvs, last) :]
                    if not pending:
                        self.store.cond.wait(
                            min(0.5, max(0.01, min(deadline, next_bookmark) - now))
                        )
                        if self._delivering.is_set():
                            i = bisect_right(self.store.history_rvs, last)
                            pending = self.store.history[i:]
            for ev in pending:
                last = ev.rv
                if ev.resource == resource and visible(ev.obj):
                    yield {"type": ev.type, "object": copy.deepcopy(ev.obj)}
            if bookmarks and self._delivering.is_set() and time.monotonic() >= next_bookmark:
                # every event up to `last` has been sent (or was not this watcher's)
                yield self._bookmark(resource, last)
                next_bookmark = time.monotonic() + self.bookmark_interval_s
            yield None
        if bookmarks and not self._stopping.is_set():
            yield self._bookmark(resource, last)

    @staticmethod
    def _bookmark(resource: str, rv: int) -> dict:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": KINDS[resource],
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)},
            },
        }


def _parse_rv(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ApiError(
            400, "BadRequest", f"resourceVersion: Invalid value: {text!r}: must be an integer"
        ) from None
    if n < 0:
        raise ApiError(400, "BadRequest", f"resourceVersion: Invalid value: {text!r}")
    return n


def _patch_rv(body: Any) -> str | None:
    if isinstance(body, dict):
        return (body.get("metadata") or {}).get("resourceVersion")
    return None


def _qos(spec: dict) -> str:
    reqs, lims = [], []
    for c in spec.get("containers", []):
        r = (c.get("resources") or {}).get("requests") or {}
        lim = (c.get("resources") or {}).get("limits") or {}
        reqs.append(r)
        lims.append(lim)
    if not any(reqs) and not any(lims):
        return "BestEffort"
    guaranteed = all(
        lim.get("cpu")
        and lim.get("memory")
        and (
            not r
            or (
                r.get("cpu", lim["cpu"]) == lim["cpu"]
                and r.get("memory", lim["memory"]) == lim["memory"]
            )
        )
        for r, lim in zip(reqs, lims, strict=True)
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _check_pod_spec_update(name: str, old: dict, new: dict) -> None:
    """Pod updates may change only images and activeDeadlineSeconds (422 otherwise)."""

    def strip(spec: dict) -> dict:
        s = copy.deepcopy(spec)
        for key in MUTABLE_POD_SPEC:
            s.pop(key, None)
        for lst in ("containers", "initContainers"):
            for c in s.get(lst, []) or []:
                c.pop("image", None)
        return s

    if strip(old) != strip(new):
        changed = sorted(k for k in set(old) | set(new) if strip(old).get(k) != strip(new).get(k))
        raise ApiError(
            422,
            "Invalid",
            f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields '
            "other than `spec.containers[*].image`, `spec.initContainers[*].image`, "
            "`spec.activeDeadlineSeconds` "
            f"(changed: {', '.join('spec.' + k for k in changed)})",
        )


# ---- HTTP ----------------------------------------------------------------------------------

_PATH = re.compile(
    r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>nodes|pods|bindings)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|binding))?/?$"
)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (a stopped watch) is normal; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_emu: ApiServerEmulator

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None

    def _token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _handle(self) -> None:
        emu = self.server_emu
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        m = _PATH.match(url.path)
        try:
            body = self._body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else None
            if not m:
                raise ApiError(
                    404,
                    "NotFound",
                    f"the server could not find the requested resource ({url.path})",
                )
            ns, res, name, sub = (
                m.group("ns"),
                m.group("res"),
                m.group("name"),
                m.group("sub") or "",
            )
            if res == "nodes" and ns is not None:
                raise ApiError(404, "NotFound", "nodes are cluster-scoped")
            if res == "bindings":  # POST /api/v1/namespaces/{ns}/bindings (body names the pod)
                if self.command != "POST" or ns is None or name:
                    raise ApiError(405, "MethodNotAllowed", "bindings support only create")
                name = ((body or {}).get("metadata") or {}).get("name") or ""
                res, sub = "pods", "binding"
            if sub == "binding" and res != "pods":
                raise ApiError(404, "NotFound", "binding is a pod subresource")
            verb = _VERBS.get(self.command, self.command.lower())
            if self.command == "GET" and not name:
                verb = "watch" if query.get("watch") in ("true", "1") else "list"
            emu.check(Call(self._token(), verb, res, sub, ns or "", name or ""))
            if verb == "watch":
                self._watch(res, ns, query)
                return
            if verb == "list":
                self._send(200, emu.list(res, ns, query))
            elif verb == "get":
                self._send(200, emu.get(res, ns, name))
            elif sub == "binding":
                self._send(201, emu.bind(ns, name, body))
            elif verb == "create":
                if name:
                    raise ApiError(405, "MethodNotAllowed", "POST goes to the collection")
                self._send(201, emu.create(res, ns, body))
            elif verb == "update":
                self._send(200, emu.update(res, ns, name, body, sub))
            elif verb == "patch":
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                self._send(200, emu.patch(res, ns, name, body, ctype, sub))
            elif verb == "delete":
                grace = (body or {}).get("gracePeriodSeconds")
                if query.get("gracePeriodSeconds") is not None:
                    grace = int(query["gracePeriodSeconds"])
                self._send(200, emu.delete(res, ns, name, grace))
            else:
                raise ApiError(405, "MethodNotAllowed", f"{self.command} is not supported")
        except ApiError as err:
            self._send(err.code, err.status())

    def _watch(self, res: str, ns: str | None, query: dict[str, str]) -> None:
        events = self.server_emu.watch_events(res, ns, query)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                if event is None:
                    continue
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815 (stdlib names)
