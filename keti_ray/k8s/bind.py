"""The extender's bindVerb: book the pod's GPUs on the node kube-scheduler chose, write the
decision onto the pod, then bind it.

kube-scheduler sends ExtenderBindingArgs {PodName, PodNamespace, PodUID, Node} and reads
ExtenderBindingResult {Error} (k8s.io/kube-scheduler/extender/v1); an extender with a
bindVerb binds the pods it manages instead of kube-scheduler. The steps, in this order:
1. read the pod (its per-container keti.re.kr/gpu-pct requests) and the node (SMs per GPU);
2. book each GPU container through the allocation service with `node=` (CONTRACTS §4; one
   booking per container, as kubelet allocates per container);
3. patch the pod's `keti.re.kr/allocation` annotation (CONTRACTS §3), so the GPU plugin's
   Allocate finds the decision once kubelet admits the pod;
4. create the pods/binding (with the pod's UID as precondition).
Any failure releases what this bind booked and answers Error, so kube-scheduler retries the
pod. When the outcome of the binding is unknown (a timeout), the pod is read again: bound to
this node is success; only a pod seen unbound is released (the store's reconcile catches the
rest). A retried bind of a pod already bound to this node answers success.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client

from keti_ray.annotations import Allocation, ContainerAllocation, encode_allocation
from keti_ray.cluster import PodRequest
from keti_ray.constants import ANN_ALLOCATION, ANN_GPU_SM_COUNT, LABEL_GPU_MODEL
from keti_ray.k8s.objects import GpuPod, ObjectError, gpu_pod
from keti_ray.shares import Mechanism, device_sm_count, share_for

log = logging.getLogger("keti_ray.k8s.bind")

HTTP_CONFLICT = 409
HTTP_NOT_FOUND = 404


class BookingFacade(Protocol):
    """The part of the allocation service a bind uses (CONTRACTS §4)."""

    def allocate(
        self,
        pod: PodRequest,
        dry_run: bool = False,
        node: str | None = None,
        uid: str | None = None,
    ) -> Any: ...
    def release(self, key: str, uid: str | None = None) -> bool: ...


class BindError(Exception):
    """A bind that failed; the message goes to kube-scheduler as ExtenderBindingResult.Error."""


@dataclass(frozen=True)
class BindingArgs:
    pod_name: str
    namespace: str
    uid: str
    node: str

    @classmethod
    def parse(cls, args: Any) -> BindingArgs:
        """ExtenderBindingArgs; keys matched case-insensitively, as Go's decoder does."""
        if not isinstance(args, dict):
            raise BindError("ExtenderBindingArgs must be a JSON object")
        lowered = {k.lower(): v for k, v in args.items() if isinstance(k, str)}
        values = {}
        for field in ("PodName", "PodNamespace", "PodUID", "Node"):
            value = lowered.get(field.lower())
            if not isinstance(value, str) or not value:
                raise BindError(f"ExtenderBindingArgs.{field} is required (a non-empty string)")
            values[field] = value
        return cls(values["PodName"], values["PodNamespace"], values["PodUID"], values["Node"])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod_name}"


def _decision_dict(decision: Any) -> dict:
    return decision.as_dict() if hasattr(decision, "as_dict") else dict(decision)


def _is(exc: BaseException, name: str) -> bool:
    """An exception of the service's class `name`, also when Ray wrapped it (RayTaskError)."""
    return any(c.__name__ == name for c in type(exc).__mro__)


def _is_conflict(exc: BaseException) -> bool:
    """The facade's "booked already, with another request" outcome: its exception carries
    `conflict = True` (keti_ray.booking.service.Conflict), never read from the
    message text."""
    return getattr(exc, "conflict", False) is True or _is(exc, "Conflict")


class Binder:
    """bindVerb against one API server and one allocation service."""

    def __init__(self, api: client.CoreV1Api, facade: BookingFacade) -> None:
        self.api = api
        self.facade = facade
        self.bound = 0
        self.failed = 0

    def bind(self, args: Any) -> dict:
        """ExtenderBindingResult: {"Error": ""} when bound, else the reason."""
        try:
            parsed = BindingArgs.parse(args)
            self._bind(parsed)
        except BindError as exc:
            self.failed += 1
            log.warning("bind failed: %s", exc)
            return {"Error": str(exc)}
        self.bound += 1
        return {"Error": ""}

    # ---- steps ---------------------------------------------------------------------------

    def _read_pod(self, args: BindingArgs) -> dict:
        try:
            resp = self.api.read_namespaced_pod(
                args.pod_name, args.namespace, _preload_content=False, _request_timeout=(5, 30)
            )
            pod = json.loads(resp.data)
        except client.ApiException as exc:
            raise BindError(f"pod {args.key}: cannot read it ({exc.status} {exc.reason})") from None
        except Exception as exc:
            raise BindError(f"pod {args.key}: cannot read it ({type(exc).__name__})") from None
        if pod["metadata"].get("uid") != args.uid:
            raise BindError(
                f"pod {args.key} has UID {pod['metadata'].get('uid')}, not {args.uid}: it was "
                "replaced since kube-scheduler read it"
            )
        return pod

    def _device_sms(self, node: str) -> int | None:
        """SMs per GPU on `node`: its keti.re.kr/gpu-sm-count, else the model's data sheet."""
        try:
            resp = self.api.read_node(node, _preload_content=False, _request_timeout=(5, 30))
            meta = json.loads(resp.data)["metadata"]
        except Exception as exc:
            raise BindError(f"node {node}: cannot read it ({type(exc).__name__})") from None
        text = (meta.get("annotations") or {}).get(ANN_GPU_SM_COUNT)
        if text and text.isdigit() and int(text) > 0:
            return int(text)
        return device_sm_count((meta.get("labels") or {}).get(LABEL_GPU_MODEL, ""))

    def _book(self, pod: GpuPod, node: str) -> tuple[dict[str, dict], list[str]]:
        """Book every GPU container on `node`; container -> decision, and the keys booked.
        On failure, releases what it booked and raises BindError."""
        keys = pod.booking_keys()
        requests = pod.requests()
        decisions: dict[str, dict] = {}
        booked: list[str] = []
        try:
            for container, key in keys.items():
                decisions[container] = self._allocate_one(requests[key], node, pod.uid)
                booked.append(key)
        except BindError:
            self._release(booked, pod.uid)
            raise
        return decisions, booked

    def _allocate_one(self, request: PodRequest, node: str, uid: str) -> dict:
        for attempt in (1, 2):
            try:
                return _decision_dict(self.facade.allocate(request, node=node, uid=uid))
            except Exception as exc:
                if _is_conflict(exc) and attempt == 1:
                    # booked before by a bind that did not complete (the pod is still unbound,
                    # or this call would not be made): that booking is stale; take it back
                    log.info("%s: replacing a stale booking: %s", request.name, exc)
                    self.facade.release(request.name, uid)
                    continue
                kind = "no fit" if _is(exc, "NoFit") else type(exc).__name__
                raise BindError(f"{request.name} on node {node}: {kind}: {exc}") from None
        raise AssertionError("unreachable")

    def _release(self, keys: list[str], uid: str) -> None:
        for key in keys:
            try:
                self.facade.release(key, uid)
            except Exception as exc:  # the store's reconcile releases it later
                log.error("could not release %s after a failed bind: %s", key, exc)

    def _annotation(self, decisions: Mapping[str, dict], policy: str, node: str, sms: int | None):
        containers = {}
        for name, d in decisions.items():
            gpus = d["gpus"]
            milli = int(gpus[0]["milli"])
            mechanism = gpus[0].get("mechanism") or Mechanism.MPS
            if milli >= 1000:
                mechanism = Mechanism.EXCLUSIVE
            share = share_for(milli, sms, mechanism)
            containers[name] = ContainerAllocation(
                gpus=tuple(g["uuid"] for g in gpus),
                milli=share.milli,
                sm_pct=share.as_dict()["sm_pct"],
                sms=share.sms,
                mechanism=share.mechanism,
            )
        return encode_allocation(Allocation(node=node, policy=policy, containers=containers))

    def _bind(self, args: BindingArgs) -> None:
        obj = self._read_pod(args)
        try:
            pod = gpu_pod(obj)
        except ObjectError as exc:
            raise BindError(str(exc)) from None
        current = (obj.get("spec") or {}).get("nodeName")
        if current:
            if current == args.node and ANN_ALLOCATION in (
                obj["metadata"].get("annotations") or {}
            ):
                return  # a retried bind that succeeded before
            raise BindError(f"pod {args.key} is already bound to node {current}")
        if pod is None:  # not a GPU pod: nothing to book, bind as kube-scheduler would
            self._create_binding(args)
            return
        sms = self._device_sms(args.node)
        decisions, booked = self._book(pod, args.node)
        try:
            policy = next(iter(decisions.values())).get("policy") or "unknown"
            text = self._annotation(decisions, policy, args.node, sms)
            self.api.patch_namespaced_pod(
                args.pod_name,
                args.namespace,
                {"metadata": {"annotations": {ANN_ALLOCATION: text}}},
                _request_timeout=(5, 30),
            )
        except Exception as exc:
            self._release(booked, pod.uid)
            reason = f"{exc.status} {exc.reason}" if isinstance(exc, client.ApiException) else exc
            raise BindError(f"pod {args.key}: writing {ANN_ALLOCATION} failed: {reason}") from None
        try:
            self._create_binding(args)
        except BindError:
            where = self._bound_to(args)
            if where == args.node:
                return  # the binding did happen (e.g. the answer timed out)
            if where is not None:  # unbound, gone, or bound elsewhere: the booking is not used
                self._release(booked, pod.uid)
            raise

    def _create_binding(self, args: BindingArgs) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": args.pod_name, "namespace": args.namespace, "uid": args.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": args.node},
        }
        try:
            # _preload_content=False: the API server answers a Status, which the client
            # cannot read into V1Binding (kubernetes-client/python#547)
            resp = self.api.create_namespaced_pod_binding(
                args.pod_name,
                args.namespace,
                body,
                _preload_content=False,
                _request_timeout=(5, 30),
            )
            resp.release_conn()
        except client.ApiException as exc:
            body_text = (exc.body or b"").decode() if isinstance(exc.body, bytes) else exc.body
            message = ""
            try:
                message = json.loads(body_text or "{}").get("message", "")
            except ValueError:
                pass
            raise BindError(
                f"pod {args.key}: binding to {args.node} refused ({exc.status}): {message}"
            ) from None
        except Exception as exc:
            raise BindError(
                f"pod {args.key}: binding to {args.node}: {type(exc).__name__}"
            ) from None

    def _bound_to(self, args: BindingArgs) -> str | None:
        """The pod's node after an unclear binding outcome; None if it cannot be read (then
        nothing is released: a pod that did get bound must keep its booking)."""
        try:
            resp = self.api.read_namespaced_pod(
                args.pod_name, args.namespace, _preload_content=False, _request_timeout=(5, 30)
            )
            pod = json.loads(resp.data)
        except client.ApiException as exc:
            return "" if exc.status == HTTP_NOT_FOUND else None
        except Exception:
            return None
        if pod["metadata"].get("uid") != args.uid:
            return ""
        return (pod.get("spec") or {}).get("nodeName") or ""
