"""The allocation service facade (CONTRACTS.md section 4): decide, book, release, reconcile.

One cluster state in memory, rebuilt at start from the booking store (the source of truth),
one policy host, one metrics registry, one telemetry writer. Every mutation runs under one
lock; every booking is committed to the store before it is answered, and a failed commit
undoes the in-memory booking as well, so "200" always means "booked and durable" and a 503
means "nothing booked".
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keti_ray.allocators import make_allocator
from keti_ray.allocators.base import Allocator
from keti_ray.allocators.gpu_select import best_fit_gpu
from keti_ray.booking.events import EventWriter
from keti_ray.booking.ingest import TelemetryIngest
from keti_ray.booking.legacy import read_legacy_journal
from keti_ray.booking.metrics import ServiceMetrics
from keti_ray.booking.policy_host import PolicyHost, PolicySpec
from keti_ray.booking.store import Booking, BookingStore, StoreUnavailable, Transaction
from keti_ray.cluster import (
    AllocationError,
    ClusterState,
    ModelError,
    NodeSpec,
    Placement,
    PodRequest,
)
from keti_ray.fragmentation import FragmentationModel, TypicalPods, fragmentation_pct
from keti_ray.podenv import gpu_memory_mib, gpu_pod_env, simulated_gpu_uuid
from keti_ray.shares import (
    UNITS_PER_GPU,
    Mechanism,
    device_sm_count,
    limit_pct,
    served_milli,
    share_for,
    smallest_gpu_sms,
)
from keti_ray.telemetry import TelemetryStore

log = logging.getLogger("keti_ray.booking")

DEFAULT_MECHANISM = Mechanism.MPS
DEFAULT_NAMESPACE = "default"
RECONCILE_GRACE_S = 30.0  # a booking this young may be waiting for its bind; keep it
SET_ASIDE_SHOWN = 20


class NoFit(Exception):
    """Nothing in the cluster can host the pod right now (HTTP 409)."""


class Conflict(Exception):
    """The pod is booked already with a different request (HTTP 409, naming the pod)."""

    conflict = True  # what a bind tests (keti_ray/k8s/bind.py), also through a Ray wrapper


def pod_key(name: str, namespace: str | None = None) -> str:
    """A pod's identity: `namespace/name` (a bare name is in namespace `default`)."""
    if namespace:
        return f"{namespace}/{name}"
    return name if "/" in name else f"{DEFAULT_NAMESPACE}/{name}"


@dataclass(frozen=True)
class AllocateCall:
    """One request to decide: the pod, whether to book, an optional node (bind) and UID."""

    pod: PodRequest
    dry_run: bool = False
    node: str | None = None
    uid: str | None = None


@dataclass
class Decision:
    pod: str
    node: str
    gpus: list[dict]
    sm_pct: int
    env: dict[str, str]
    policy: str
    decision_ms: float
    dry_run: bool = False
    uid: str | None = None
    existing: bool = False  # the pod was booked already: this is its booking, unchanged

    def as_dict(self) -> dict:
        return {
            "pod": self.pod,
            "uid": self.uid,
            "node": self.node,
            "gpus": self.gpus,
            "sm_pct": self.sm_pct,
            "env": self.env,
            "policy": self.policy,
            "decision_ms": round(self.decision_ms, 3),
            "dry_run": self.dry_run,
            "existing": self.existing,
        }


def request_dict(pod: PodRequest) -> dict[str, Any]:
    """What a pod asked for, as stored (the idempotency check compares these)."""
    return {
        "cpu_milli": int(pod.cpu_milli),
        "memory_mib": int(pod.memory_mib),
        "num_gpu": int(pod.num_gpu),
        "gpu_milli": int(pod.gpu_milli),
        "gpu_spec": sorted(pod.gpu_spec),
    }


def served_pod(pod: PodRequest, device_sms: int | None = None) -> PodRequest:
    """The pod as the cluster model books it: a shared GPU is served in whole units, at
    least the smallest share of a GPU of `device_sms` SMs (`keti_ray.shares`)."""
    if not pod.num_gpu:
        return pod
    milli = served_milli(pod.gpu_milli, device_sms)
    if milli == pod.gpu_milli:
        return pod
    return PodRequest(pod.name, pod.cpu_milli, pod.memory_mib, pod.num_gpu, milli, pod.gpu_spec)


def describe(pod: PodRequest) -> str:
    gpu = f"{pod.num_gpu}x{pod.gpu_milli} milli GPU" if pod.num_gpu else "no GPU"
    return f"cpu_milli={pod.cpu_milli}, memory_mib={pod.memory_mib}, {gpu}"


class AllocationService:
    """Cluster state + policy host + booking store. Thread-safe: one lock around mutations."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        typical: TypicalPods | None = None,
        policy: PolicySpec | None = None,
        state: str | Path | None = None,
        seed: int = 0,
        telemetry: TelemetryStore | None = None,
        gpu_uuids: Mapping[str, Sequence[str]] | None = None,
        journal: str | Path | None = None,
        follow_pointer_s: float | None = None,
    ) -> None:
        self.typical = typical or TypicalPods.default()
        self.seed = seed
        self._lock = threading.RLock()
        self.metrics = ServiceMetrics()
        self.store = BookingStore(state or journal)
        self.import_report: dict | None = self.store.meta("journal_imported")
        self.policies = PolicyHost(self.typical, seed, on_change=self._persist_policy)
        self._fgd_scorer = make_allocator("fgd", self.typical, seed)
        self._booked: dict[str, Booking] = {}
        self.set_aside: list[dict] = []
        self._load(nodes, gpu_uuids)
        self._import_legacy()
        saved = self.store.meta("serving_policy")
        if policy is not None:
            self.set_policy(policy)
        elif saved is not None:
            try:
                self.set_policy(PolicySpec.from_config(saved.get("config")))
            except ValueError as exc:  # the pointer is unreadable now: say so, serve FGD
                self.policies.error = f"saved policy {saved}: {exc}"
        self.metrics.serving(self.policies.version)
        self._frag_cache = (0.0, 0.0)
        self.events = (
            EventWriter(telemetry, self.metrics.telemetry_dropped.inc, self._frag_pct)
            if telemetry is not None
            else None
        )
        self.ingest = TelemetryIngest(self.store, telemetry, self.metrics.telemetry_dropped.inc)
        if follow_pointer_s:
            self.policies.start_follower(follow_pointer_s)

    # ---- start-up: the store onto the node list -----------------------------------------------

    def _load(
        self, nodes: Sequence[NodeSpec], gpu_uuids: Mapping[str, Sequence[str]] | None
    ) -> dict:
        """Rebuild the in-memory state from the store against `nodes`; bookings whose node or
        GPU is gone (or that no longer fit) are set aside in the store and reported."""
        state = ClusterState(nodes)
        uuids = {
            name: list(
                (gpu_uuids or {}).get(name)
                or [simulated_gpu_uuid(name, g) for g in range(spec.num_gpus)]
            )
            for name, spec in zip(state.names, state.specs, strict=True)
        }
        booked: dict[str, Booking] = {}
        newly_aside: list[tuple[str, str]] = []
        for booking in self.store.bookings(include_set_aside=True):
            if booking.set_aside is None:
                reason = self._restore(state, uuids, booking)
                if reason is None:
                    booked[booking.pod] = booking
                    continue
                newly_aside.append((booking.pod, reason))
                booking = Booking(**{**booking.__dict__, "set_aside": reason})
            self.set_aside.append(
                {"pod": booking.pod, "node": booking.node, "reason": booking.set_aside}
            )
        if newly_aside:
            with self.store.transaction() as tx:
                for pod, reason in newly_aside:
                    tx.set_aside(pod, reason)
            for pod, reason in newly_aside:
                log.warning("booking of %s set aside: %s", pod, reason)
        self.state, self.gpu_uuids, self._booked = state, uuids, booked
        self._uuid_index = {n: {u: i for i, u in enumerate(us)} for n, us in uuids.items()}
        self.mechanism = {name: DEFAULT_MECHANISM for name in state.names}
        self._frag_model = FragmentationModel(self.typical, state.models)
        # A request placed anywhere must meet the smallest share of the smallest GPU.
        self._min_sms = smallest_gpu_sms(state.models)
        self.metrics.set_aside.set(len(self.set_aside))
        return {"kept": len(booked), "set_aside": [{"pod": p, "reason": r} for p, r in newly_aside]}

    @staticmethod
    def _restore(state: ClusterState, uuids: Mapping[str, list[str]], b: Booking) -> str | None:
        """Book `b` into `state`; the reason it cannot be, or None."""
        row = state.index.get(b.node)
        if row is None:
            return f"node {b.node!r} is no longer in the node list"
        index = {u: i for i, u in enumerate(uuids[b.node])}
        gpus = []
        for uuid, _ in b.gpus:
            if uuid not in index:
                return f"GPU {uuid} is no longer on node {b.node!r}"
            gpus.append(index[uuid])
        try:
            r = b.request
            milli = b.gpus[0][1] if b.gpus else int(r["gpu_milli"])
            pod = PodRequest(
                b.pod,
                r["cpu_milli"],
                r["memory_mib"],
                r["num_gpu"],
                milli,
                frozenset(r.get("gpu_spec") or ()),
            )
            state.allocate(pod, Placement(row, tuple(gpus), tuple(m for _, m in b.gpus)))
        except (ModelError, KeyError, TypeError) as exc:
            return f"no longer fits: {str(exc)[:200]}"
        return None

    def _import_legacy(self) -> None:
        """The old JSON journal, once: its standing bookings go into the store in one
        transaction together with the mark that says the import is done."""
        path = self.store.legacy_journal
        if path is None or self.import_report is not None:
            return
        journal = read_legacy_journal(path)
        names = self.state.names
        with self.store.transaction() as tx:
            for name, record in journal.live.items():
                pod, placement = record["pod"], record["placement"]
                idx = placement["node"]
                node = names[idx] if 0 <= idx < len(names) else f"#{idx}"
                uuids = self.gpu_uuids.get(node, [])
                gpus = tuple(
                    (uuids[g] if 0 <= g < len(uuids) else f"{node}#gpu{g}", m)
                    for g, m in zip(placement["gpus"], placement["milli"], strict=True)
                )
                request = {k: pod[k] for k in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli")}
                request["gpu_spec"] = sorted(pod.get("gpu_spec") or ())
                tx.put(Booking(pod_key(name), node, request, gpus, "imported"))
            report = {
                "file": str(path),
                "lines": journal.lines,
                "bookings": len(journal.live),
                "torn_tail_skipped": journal.torn_tail,
                "at": time.time(),
            }
            tx.set_meta("journal_imported", report)
        self.import_report = report
        log.warning("imported %d bookings from the old journal %s", len(journal.live), path)
        self.set_aside.clear()
        self._load(self.state.specs, self.gpu_uuids)

    # ---- policy --------------------------------------------------------------------------------

    @property
    def policy_version(self) -> str:
        return self.policies.version

    @property
    def policy_error(self) -> str | None:
        return self.policies.error

    def set_policy(self, spec: PolicySpec) -> str:
        version = self.policies.set(spec)
        self.metrics.serving(version)
        return version

    def set_typical(self, typical: TypicalPods) -> str:
        """FGD's typical-pod mix, swapped between two decisions (keti_ray/k8s/live_mix.py
        calls it): the serving policy, the FGD scorer of prioritize and the fragmentation
        model are rebuilt for it. The policy is rebuilt first, outside the lock (a PPO
        checkpoint loads slowly), and swaps atomically itself. Returns the version serving."""
        version = self.policies.set_typical(typical)
        scorer = make_allocator("fgd", typical, self.seed)
        with self._lock:
            self.typical = typical
            self._fgd_scorer = scorer
            self._frag_model = FragmentationModel(typical, self.state.models)
            self._frag_cache = (0.0, 0.0)
        return version

    def refresh_pointer(self) -> str:
        version = self.policies.refresh_pointer()
        self.metrics.serving(version)
        return version

    def _persist_policy(self, spec: PolicySpec, version: str) -> None:
        """Remember what serves, so a restarted actor serves it again (not FGD)."""
        try:
            with self.store.transaction() as tx:
                tx.set_meta("serving_policy", {"config": spec.config(), "version": version})
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("policy").inc()
            log.error("could not persist the serving policy: %s", exc)

    # ---- decisions -----------------------------------------------------------------------------

    def allocate(
        self,
        pod: PodRequest,
        dry_run: bool = False,
        node: str | None = None,
        uid: str | None = None,
    ) -> Decision:
        """Decide and (unless dry_run) book; `node` restricts the choice to that node (bind).
        Idempotent: the same pod with the same request gets its booking back. Raises NoFit,
        Conflict, ModelError (a refused request) or StoreUnavailable (nothing booked)."""
        result = self.decide_many([AllocateCall(pod, dry_run, node, uid)])[0]
        status = result["status"]
        if status == 200:
            return result["decision"]
        error = {409: Conflict if result.get("conflict") else NoFit, 422: ModelError}.get(status)
        if error is not None:
            raise error(result["error"])
        raise StoreUnavailable(result["error"])

    def allocate_batch(self, pods: Sequence[PodRequest], dry_run: bool = False) -> list[dict]:
        """Decide in order under one lock, one transaction; each entry carries its status."""
        return [self._public(r) for r in self.decide_many([AllocateCall(p, dry_run) for p in pods])]

    def decide_json(self, calls: Sequence[AllocateCall | tuple]) -> list[dict]:
        """`decide_many` with the decisions as JSON-ready dicts (what the HTTP layer sends)."""
        return [self._public(r) for r in self.decide_many(calls)]

    @staticmethod
    def _public(result: dict) -> dict:
        """A 409 says by `conflict` which it is: True = the pod is booked already with another
        request (release it first), False = nothing fits now. Callers test the flag, not the
        error text."""
        out = {k: v for k, v in result.items() if k not in ("decision", "booked", "seconds")}
        if out["status"] == 409:
            out["conflict"] = bool(result.get("conflict"))
        else:
            out.pop("conflict", None)
        if "decision" in result:
            out.update(result["decision"].as_dict())
        return out

    def decide_many(self, calls: Sequence[AllocateCall | tuple]) -> list[dict]:
        """Requests in order, under one lock and ONE transaction (group commit: one fsync)
        with a savepoint per pod. Each answer carries its HTTP status: 200 with the decision,
        409 nothing fits or a conflicting booking, 422 refused, 503 the store failed. When the
        commit fails, every booking of the batch is undone in memory too and answers 503."""
        calls = [c if isinstance(c, AllocateCall) else AllocateCall(*c) for c in calls]
        out: list[dict] = []
        with self._lock:
            booked: list[int] = []
            try:
                if all(c.dry_run for c in calls):
                    out = [self._decide(c, None) for c in calls]
                else:
                    with self.store.transaction() as tx:
                        for call in calls:
                            out.append(self._decide(call, tx))
                            if out[-1].get("booked"):
                                booked.append(len(out) - 1)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("commit").inc()
                for i in booked:
                    key = out[i]["pod"]
                    self.state.release(key)
                    self._booked.pop(key, None)
                    out[i] = self._unavailable(key, str(exc))
                for call in calls[len(out) :]:
                    out.append(self._unavailable(pod_key(call.pod.name), str(exc)))
                log.error("booking batch of %d failed: %s", len(calls), exc)
                return out
            version = self.policies.version
            for i in booked:
                self.metrics.decided(version, "placed", out[i]["seconds"])
                self._event("allocate", self._booked[out[i]["pod"]], out[i]["seconds"])
        return out

    def _unavailable(self, key: str, error: str) -> dict:
        self.metrics.decisions.labels(self.policies.version, "error").inc()
        return {"status": 503, "pod": key, "error": error}

    def _decide(self, call: AllocateCall, tx: Transaction | None) -> dict:
        """One decision; books into `tx` (a savepoint) unless dry run. Outcome metrics are
        counted here except `placed`, counted once the commit succeeded."""
        start = time.perf_counter()
        allocator, version = self.policies.current()
        key = pod_key(call.pod.name)
        pod = call.pod if call.pod.name == key else _renamed(call.pod, key)

        def done(outcome: str, status: int, **fields: Any) -> dict:
            seconds = time.perf_counter() - start
            if not fields.get("booked"):  # a new booking is counted once it is committed
                self.metrics.decided(version, outcome, seconds)
            return {"status": status, "pod": key, "seconds": seconds, **fields}

        existing = self._booked.get(key)
        if existing is not None:
            problem = _mismatch(existing, pod, call)
            if problem:
                return done(
                    "refused",
                    409,
                    conflict=True,
                    error=f"pod {key!r} is booked already on node {existing.node!r} {problem}; "
                    "release it first",
                )
            decision = self._decision(pod, existing, time.perf_counter() - start, call.dry_run)
            decision.existing = True
            return done("dry_run" if call.dry_run else "placed", 200, decision=decision)
        try:
            served = served_pod(pod, self._sms_for(call.node))
            placement = self._choose(allocator, served, call.node)
        except ModelError as exc:
            return done("refused", 422, error=str(exc)[:300])
        if placement is None:
            where = f"node {call.node!r}" if call.node else "no node"
            return done("nofit", 409, error=f"{where} can host pod {key!r} now ({describe(pod)})")
        node = self.state.names[placement.node]
        booking = Booking(
            key,
            node,
            request_dict(pod),
            tuple(
                (self.gpu_uuids[node][g], m)
                for g, m in zip(placement.gpus, placement.milli, strict=True)
            ),
            version,
            call.uid,
        )
        if call.dry_run or tx is None:
            decision = self._decision(pod, booking, time.perf_counter() - start, True)
            return done("dry_run", 200, decision=decision)
        try:
            self.state.check(served, placement)
            with tx.savepoint():
                tx.put(booking)
        except AllocationError as exc:  # a policy bug; never book it
            return done("error", 500, error=f"policy {version} chose an invalid placement: {exc}")
        except sqlite3.Error as exc:
            self.metrics.store_errors.labels("put").inc()
            return done("error", 503, error=f"booking store: {exc}; nothing was booked")
        self.state.allocate(served, placement)
        self._booked[key] = booking
        if any(s["pod"] == key for s in self.set_aside):  # booked anew: no longer aside
            self.set_aside = [s for s in self.set_aside if s["pod"] != key]
            self.metrics.set_aside.set(len(self.set_aside))
        decision = self._decision(pod, booking, time.perf_counter() - start, False)
        result = done("placed", 200, decision=decision, booked=True)
        return result

    def _sms_for(self, node: str | None) -> int | None:
        """SMs whose smallest share a request must meet: the named node's GPUs (a bind), or
        the cluster's smallest GPU (the policy may choose any node)."""
        row = self.state.index.get(node) if node else None
        if row is None:
            return self._min_sms
        return device_sm_count(self.state.specs[row].model) or self._min_sms

    def _choose(self, allocator: Allocator, pod: PodRequest, node: str | None) -> Placement | None:
        """The policy's placement; with `node`, the best GPUs on that node (bind)."""
        if node is None:
            return allocator.place(self.state, pod)
        row = self.state.index.get(node)
        if row is None:
            raise ModelError(f"node {node[:64]!r} is not managed by keti-ray", "node")
        if not self.state.feasible_nodes(pod)[row]:
            return None
        choice = allocator.place(self.state, pod)
        if choice is not None and choice.node == row:
            return choice
        return best_fit_gpu(self.state, pod, row)

    def _decision(
        self, pod: PodRequest, booking: Booking, seconds: float, dry_run: bool
    ) -> Decision:
        """The answer for a booking: per GPU its UUID, the booked milli and what the pod gets
        of it (`Share.as_dict()`: sm_pct, sms, device_sms, mechanism), and the container env."""
        node = booking.node
        model = self.state.specs[self.state.index[node]].model
        index = self._uuid_index[node]
        gpus = [
            {"index": index[uuid], "uuid": uuid, **self._share(milli, node)}
            for uuid, milli in booking.gpus
        ]
        sm_pct = 0
        env: dict[str, str] = {}
        if booking.gpus:
            milli = booking.gpus[0][1]
            sm_pct = limit_pct(milli) or UNITS_PER_GPU
            memory = gpu_memory_mib(model)
            limit = memory * milli // 1000 if milli < 1000 and memory else None
            env = gpu_pod_env([u for u, _ in booking.gpus], sm_pct, limit)
        return Decision(
            booking.pod,
            node,
            gpus,
            sm_pct,
            env,
            booking.policy,
            seconds * 1000,
            dry_run,
            booking.uid,
        )

    def _share(self, milli: int, node: str) -> dict:
        """What one GPU share gives the pod: {milli, sm_pct, sms, device_sms, mechanism}."""
        model = self.state.specs[self.state.index[node]].model
        return dict(_share_dict(milli, model, self.mechanism[node]))

    # ---- release and reconcile -----------------------------------------------------------------

    def release(self, key: str, uid: str | None = None) -> bool:
        """Free the pod's booking (an active or a set-aside one); False if there is none, or
        if `uid` names another incarnation of the pod. StoreUnavailable: nothing changed."""
        key = pod_key(key)
        with self._lock:
            booking = self._booked.get(key) or self.store.get(key)
            if booking is None or (uid and booking.uid and uid != booking.uid):
                return False
            try:
                with self.store.transaction() as tx:
                    tx.delete(key)
            except StoreUnavailable:
                self.metrics.store_errors.labels("release").inc()
                raise
            self._forget(key, booking)
            return True

    def _forget(self, key: str, booking: Booking) -> None:
        if self._booked.pop(key, None) is not None:
            self.state.release(key)
            self._event("release", booking, None)
        else:
            self.set_aside = [s for s in self.set_aside if s["pod"] != key]
            self.metrics.set_aside.set(len(self.set_aside))
        self.metrics.releases.inc()

    def bookings(self) -> list[dict]:
        """Active bookings: pod key, uid, node name, GPU UUIDs and milli per GPU."""
        with self._lock:
            return [b.as_dict() for b in self._booked.values()]

    def reconcile(self, live: Mapping[str, str], grace_s: float = RECONCILE_GRACE_S) -> dict:
        """Against the API server's pods (key -> node name): release bookings whose pod is gone
        (older than `grace_s`, so a booking waiting for its bind stays), report pods bound but
        unknown here, and pods bound to another node than booked."""
        now = time.time()
        with self._lock:
            gone = [
                k for k, b in self._booked.items() if k not in live and now - b.booked_at > grace_s
            ]
            if gone:
                try:
                    with self.store.transaction() as tx:
                        for key in gone:
                            tx.delete(key)
                except StoreUnavailable:
                    self.metrics.store_errors.labels("release").inc()
                    raise
                for key in gone:
                    self._forget(key, self._booked[key])
            unknown = sorted(k for k in live if k not in self._booked)
            moved = {
                k: {"booked": self._booked[k].node, "bound": node}
                for k, node in live.items()
                if k in self._booked and self._booked[k].node != node
            }
        return {"released": sorted(gone), "unknown": unknown, "mismatched": moved}

    def replace_nodes(
        self, nodes: Sequence[NodeSpec], gpu_uuids: Mapping[str, Sequence[str]] | None = None
    ) -> dict:
        """A changed node list (from the API server): the state is rebuilt from the store;
        bookings on vanished nodes or GPUs are set aside and reported."""
        with self._lock:
            self.set_aside = []
            report = self._load(nodes, gpu_uuids)
        return report

    # ---- views ---------------------------------------------------------------------------------

    def partition(self) -> dict:
        """Per node and GPU: who holds which SM share, by which mechanism."""
        with self._lock:
            nodes: dict[str, dict] = {}
            for name, spec in zip(self.state.names, self.state.specs, strict=True):
                if spec.num_gpus == 0:
                    continue
                row = self.state.index[name]
                nodes[name] = {
                    "model": spec.model,
                    "gpus": [
                        {
                            "index": g,
                            "uuid": self.gpu_uuids[name][g],
                            "free_milli": int(self.state.gpu_free[row, g]),
                            "partitions": [],
                        }
                        for g in range(spec.num_gpus)
                    ],
                }
            for booking in self._booked.values():
                index = self._uuid_index[booking.node]
                for uuid, milli in booking.gpus:
                    nodes[booking.node]["gpus"][index[uuid]]["partitions"].append(
                        {"pod": booking.pod, "uid": booking.uid, **self._share(milli, booking.node)}
                    )
            return {"nodes": nodes}

    def health(self) -> dict:
        with self._lock:
            out = {
                "ready": True,
                "policy": self.policies.version,
                "policy_error": self.policies.error,
                "nodes": self.state.num_nodes,
                "gpus": int(self.state.gpu_count.sum()),
                "placements": len(self._booked),
                "set_aside": {
                    "count": len(self.set_aside),
                    "bookings": self.set_aside[:SET_ASIDE_SHOWN],
                },
                "store": {"path": self.store.name, "schema_version": self.store.schema_version},
            }
            if self.import_report:
                out["store"]["journal_imported"] = self.import_report
            if self.events is not None:
                out["telemetry"] = {
                    "written": self.events.written,
                    "errors": self.events.errors,
                    "last_error": self.events.last_error,
                }
            return out

    def metrics_text(self) -> bytes:
        with self._lock:
            self.metrics.unallocated.set(self.state.unallocated_gpu_pct() / 100)
            self.metrics.fragmentation.set(self._frag_pct(max_age_s=0) / 100)
            self.metrics.pods_placed.set(len(self._booked))
            self.metrics.serving(self.policies.version)
        return self.metrics.text()

    def count_refused(self, n: int = 1) -> None:
        """Requests the HTTP layer refused before they got here (422): counted, so that
        refusals show in keti_allocator_decisions_total{outcome="refused"}."""
        self.metrics.decisions.labels(self.policies.version, "refused").inc(n)

    def _frag_pct(self, max_age_s: float = 5.0) -> float:
        """FGD fragmentation, recomputed at most every `max_age_s` (it scores every node)."""
        at, value = self._frag_cache
        if time.monotonic() - at > max_age_s:
            with self._lock:
                value = fragmentation_pct(self.state, self._frag_model)
            self._frag_cache = (time.monotonic(), value)
        return value

    # ---- kube-scheduler extender ---------------------------------------------------------------

    def filter_nodes(
        self, pod: PodRequest, names: Sequence[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Split candidate node names into those that can host the pod and why the others can't."""
        with self._lock:
            feasible = self.state.feasible_nodes(served_pod(pod, self._min_sms))
            ok, failed = [], {}
            for name in names:
                row = self.state.index.get(name)
                if row is None:
                    failed[name] = "node is not managed by keti-ray"
                elif feasible[row]:
                    ok.append(name)
                else:
                    failed[name] = f"insufficient resources for {describe(pod)}"
            return ok, failed

    def prioritize(self, pod: PodRequest, names: Sequence[str]) -> list[dict]:
        """Extender priorities 0-10: the policy's choice gets 10, the rest FGD's score scaled."""
        with self._lock:
            pod = served_pod(pod, self._min_sms)
            allocator, version = self.policies.current()
            feasible = self.state.feasible_nodes(pod)
            choice = allocator.place(self.state, pod)
            fgd = allocator if version == "fgd" else self._fgd_scorer
            scores = fgd.node_scores(self.state, pod)
            out = []
            for name in names:
                row = self.state.index.get(name)
                if row is None or not feasible[row]:
                    score = 0
                elif choice is not None and row == choice.node:
                    score = 10
                else:
                    score = min(9, int(scores[row]) // 10)
                out.append({"Host": name, "Score": score})
            return out

    # ---- telemetry -----------------------------------------------------------------------------

    def _event(self, op: str, booking: Booking, seconds: float | None) -> None:
        """Offer the event to the telemetry writer (never blocks; a full queue counts a drop)."""
        if self.events is None:
            return
        r = booking.request
        self.events.offer(
            {
                "time": time.time(),
                "node": booking.node,
                "op": op,
                "pod": booking.pod,
                "policy": booking.policy,
                "cpu_milli": r.get("cpu_milli"),
                "memory_mib": r.get("memory_mib"),
                "num_gpu": r.get("num_gpu"),
                "gpu_milli": r.get("gpu_milli"),
                "gpu_spec": "|".join(r.get("gpu_spec") or ()),
                "decision_ms": None if seconds is None else seconds * 1000,
                "unallocated_gpu_pct": self.state.unallocated_gpu_pct(),
            }
        )

    def push_telemetry(
        self,
        node: str,
        batch: str,
        inventory: Sequence[dict[str, Any]],
        records: Sequence[dict[str, Any]],
    ) -> dict[str, Any]:
        """A node agent's pushed batch (POST /telemetry), each batch ID once (booking/ingest.py);
        StoreUnavailable when the ID cannot be recorded (the agent retries)."""
        return self.ingest.push(node, batch, inventory, records)

    def push_events(self, timeout_s: float = 10.0) -> int:
        """Wait until the telemetry writer has logged every queued event; rows written."""
        if self.events is None:
            return 0
        self.events.drain(timeout_s)
        return self.events.written

    def close(self) -> None:
        self.policies.stop()
        if self.events is not None:
            self.events.close()
        self.ingest.close()
        self.store.close()


@functools.lru_cache(maxsize=4096)
def _share_dict(milli: int, model: str, mechanism: Mechanism) -> dict:
    """`Share.as_dict()` of a share on a GPU model (few distinct values: cached; callers copy)."""
    return share_for(milli, device_sm_count(model), mechanism).as_dict()


def _renamed(pod: PodRequest, name: str) -> PodRequest:
    return PodRequest(name, pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, pod.gpu_spec)


def _mismatch(booking: Booking, pod: PodRequest, call: AllocateCall) -> str | None:
    """Why a new request for a booked pod is not the same request (None: it is)."""
    asked = request_dict(pod)
    if booking.request != asked:
        diff = [k for k in asked if booking.request.get(k) != asked[k]]
        return f"with a different request ({', '.join(diff)} differ)"
    if call.uid and booking.uid and call.uid != booking.uid:
        return f"under another pod UID ({booking.uid[:40]})"
    if call.node and call.node != booking.node:
        return f"and this request names node {call.node[:64]!r}"
    return None
