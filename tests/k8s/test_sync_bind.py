"""The cluster sync and the bind, against the API-server emulator and a real allocation
service (SQLite booking store), in one process: nodes and pods in, bookings out."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from keti_ray.annotations import decode_allocation
from keti_ray.booking import AllocationService
from keti_ray.cluster import PodRequest
from keti_ray.constants import ANN_ALLOCATION
from keti_ray.k8s.bind import Binder
from keti_ray.k8s.runtime import initial_nodes, start_sync

from .k8s_cluster import cluster_role_rules, core_api, gpu_node_body, gpu_pod_body

UUIDS = {
    "n1": ["GPU-11111111-0000-0000-0000-000000000001", "GPU-11111111-0000-0000-0000-000000000002"],
    "n2": ["GPU-22222222-0000-0000-0000-000000000001", "GPU-22222222-0000-0000-0000-000000000002"],
}


def wait(pred, timeout=5.0, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(apiserver, tmp_path):
    admin = core_api(apiserver.url)
    for name, uuids in UUIDS.items():
        admin.create_node(gpu_node_body(name, uuids))
    apiserver.authorize("allocator", cluster_role_rules("keti-allocator"))
    api = core_api(apiserver.url, token="allocator")
    nodes, uuids = initial_nodes(api)
    service = AllocationService(nodes, state=tmp_path / "bookings.sqlite", gpu_uuids=uuids)
    sync = start_sync(service, api, resync_s=0.3)
    assert sync.wait_synced(5)
    yield {"admin": admin, "api": api, "service": service, "sync": sync, "emu": apiserver}
    sync.stop()
    service.close()


def create(admin, name, units, ns="default"):
    return admin.create_namespaced_pod(ns, gpu_pod_body(name, units, ns))


def bind(c, pod, node):
    args = {
        "PodName": pod.metadata.name,
        "PodNamespace": pod.metadata.namespace,
        "PodUID": pod.metadata.uid,
        "Node": node,
    }
    return Binder(c["api"], c["service"]).bind(args)


def booked(c) -> dict[str, dict]:
    return {b["pod"]: b for b in c["service"].bookings()}


def test_nodes_come_from_the_api_server_with_their_gpus(cluster):
    status = cluster["sync"].status()
    assert {n: v["gpus"] for n, v in status["nodes"].items()} == {"n1": 2, "n2": 2}
    part = cluster["service"].partition()["nodes"]
    assert {n: [g["uuid"] for g in v["gpus"]] for n, v in part.items()} == UUIDS


def test_bind_books_annotates_and_binds(cluster):
    pod = create(cluster["admin"], "p1", 30)
    assert bind(cluster, pod, "n2") == {"Error": ""}
    got = cluster["admin"].read_namespaced_pod("p1", "default")
    assert got.spec.node_name == "n2"
    alloc = decode_allocation(got.metadata.annotations[ANN_ALLOCATION])
    (c,) = alloc.containers.values()
    b = booked(cluster)["default/p1"]
    assert alloc.node == "n2" and b["node"] == "n2" and b["uid"] == pod.metadata.uid
    assert list(c.gpus) == [g["uuid"] for g in b["gpus"]] and c.gpus[0] in UUIDS["n2"]
    assert c.milli == 300 and c.sm_pct == 30 and c.mechanism == "mps"
    assert c.sms == 132 * 30 // 100 // 2 * 2  # MPS: even SMs of the node's 132
    assert bind(cluster, pod, "n2") == {"Error": ""}  # a retried bind: bound already, fine
    assert len(cluster["service"].bookings()) == 1


def test_a_stale_booking_of_the_pod_is_replaced_by_its_bind(cluster):
    """A bind that booked and then died left a booking with another request on another node:
    the facade flags it a conflict (not a no-fit), so the next bind takes it back and books."""
    pod = create(cluster["admin"], "st", 30)
    stale = PodRequest("default/st", 250, 256, 1, 400)
    cluster["service"].allocate(stale, node="n1", uid=pod.metadata.uid)
    (answer,) = cluster["service"].decide_json(
        [(PodRequest("default/st", 250, 256, 1, 300), False, "n2", pod.metadata.uid)]
    )
    assert answer["status"] == 409 and answer["conflict"] is True
    assert bind(cluster, pod, "n2") == {"Error": ""}
    b = booked(cluster)["default/st"]
    assert b["node"] == "n2" and b["milli"] == [300]
    assert cluster["admin"].read_namespaced_pod("st", "default").spec.node_name == "n2"


def test_multi_container_pods_are_booked_per_container(cluster):
    pod = create(cluster["admin"], "multi", [40, 100])
    assert bind(cluster, pod, "n1") == {"Error": ""}
    b = booked(cluster)
    assert set(b) == {"default/multi/c0", "default/multi/c1"}
    alloc = decode_allocation(
        cluster["admin"]
        .read_namespaced_pod("multi", "default")
        .metadata.annotations[ANN_ALLOCATION]
    )
    assert alloc.containers["c0"].milli == 400 and alloc.containers["c1"].milli == 1000
    assert alloc.containers["c1"].mechanism == "exclusive"
    assert [g["uuid"] for g in b["default/multi/c1"]["gpus"]] == list(alloc.containers["c1"].gpus)
    cluster["admin"].delete_namespaced_pod("multi", "default")
    wait(lambda: not booked(cluster), what="both containers released")


def test_a_failed_binding_releases_the_booking(cluster):
    pod = create(cluster["admin"], "raced", 50)
    # someone else binds it first (another scheduler): our bind books, then the binding is 409
    cluster["admin"].create_namespaced_pod_binding(
        "raced", "default", {"metadata": {"name": "raced"}, "target": {"name": "n1"}},
        _preload_content=False,
    )  # fmt: skip
    result = bind(cluster, pod, "n2")
    assert "already bound to node n1" in result["Error"]
    assert booked(cluster) == {}


def test_a_pod_that_does_not_fit_books_nothing(cluster):
    pods = [create(cluster["admin"], f"w{i}", 100) for i in range(3)]
    assert bind(cluster, pods[0], "n1") == {"Error": ""}
    assert bind(cluster, pods[1], "n1") == {"Error": ""}
    result = bind(cluster, pods[2], "n1")
    assert "no fit" in result["Error"] and "n1" in result["Error"]
    assert set(booked(cluster)) == {"default/w0", "default/w1"}
    assert cluster["admin"].read_namespaced_pod("w2", "default").spec.node_name is None


def test_a_replaced_pod_is_refused(cluster):
    pod = create(cluster["admin"], "again", 20)
    cluster["admin"].delete_namespaced_pod("again", "default")
    create(cluster["admin"], "again", 20)
    assert "replaced" in bind(cluster, pod, "n1")["Error"]
    assert booked(cluster) == {}


def test_bad_binding_args_name_the_field(cluster):
    result = Binder(cluster["api"], cluster["service"]).bind({"PodName": "x", "Node": "n1"})
    assert result["Error"] == "ExtenderBindingArgs.PodNamespace is required (a non-empty string)"


@pytest.mark.parametrize("how", ["deleted", "Succeeded", "Failed"])
def test_a_finished_or_deleted_pod_is_released(cluster, how):
    pod = create(cluster["admin"], "done", 25)
    assert bind(cluster, pod, "n1") == {"Error": ""}
    start = time.monotonic()
    if how == "deleted":
        cluster["admin"].delete_namespaced_pod("done", "default")
    else:
        cluster["admin"].patch_namespaced_pod_status("done", "default", {"status": {"phase": how}})
    wait(lambda: not booked(cluster), what=f"release of a {how} pod")
    assert time.monotonic() - start < 2.0


def test_deletions_behind_an_expired_watch_are_released_on_relist(cluster):
    emu, admin = cluster["emu"], cluster["admin"]
    pods = [create(admin, f"g{i}", 20) for i in range(4)]
    for p in pods:
        assert bind(cluster, p, "n1") == {"Error": ""}
    wait(lambda: cluster["sync"].status()["pods_tracked"] == 4, what="pods seen")
    relists = cluster["sync"].pod_watch.stats.relists_410
    emu.hold_watches()
    admin.delete_namespaced_pod("g0", "default", grace_period_seconds=0)
    admin.delete_namespaced_pod("g1", "default", grace_period_seconds=0)
    emu.compact()
    emu.release_watches()
    wait(lambda: set(booked(cluster)) == {"default/g2", "default/g3"}, what="relist release")
    assert cluster["sync"].pod_watch.stats.relists_410 > relists


def test_a_removed_node_sets_its_bookings_aside_and_reports_them(cluster):
    pod = create(cluster["admin"], "orphan", 50)
    assert bind(cluster, pod, "n2") == {"Error": ""}
    cluster["admin"].delete_node("n2")
    wait(
        lambda: (cluster["sync"].last_nodes_report or {}).get("set_aside"),
        what="the set-aside report",
    )
    (entry,) = cluster["sync"].last_nodes_report["set_aside"]
    assert entry["pod"] == "default/orphan" and "n2" in entry["reason"]
    assert cluster["service"].health()["set_aside"]["count"] == 1
    assert "n2" not in cluster["service"].partition()["nodes"]


def test_a_restarted_service_is_reconciled_from_the_api_server(cluster, tmp_path):
    admin, api = cluster["admin"], cluster["api"]
    keep, gone = create(admin, "keep", 30), create(admin, "gone", 30)
    assert bind(cluster, keep, "n1") == {"Error": ""}
    assert bind(cluster, gone, "n1") == {"Error": ""}
    cluster["sync"].stop()
    cluster["service"].close()  # the allocator is down ...
    admin.delete_namespaced_pod("gone", "default", grace_period_seconds=0)  # ... meanwhile
    nodes, uuids = initial_nodes(api)
    service = AllocationService(nodes, state=tmp_path / "bookings.sqlite", gpu_uuids=uuids)
    sync = start_sync(service, api, resync_s=0.3)
    try:
        assert sync.wait_synced(5)
        wait(lambda: [b["pod"] for b in service.bookings()] == ["default/keep"], what="reconcile")
        (b,) = service.bookings()
        assert b["uid"] == keep.metadata.uid
    finally:
        sync.stop()
        service.close()
        cluster["service"] = AllocationService(nodes, state=tmp_path / "other.sqlite")
        cluster["sync"] = sync


def test_the_allocator_uses_only_its_rbac_rules(cluster):
    """Every call above ran under kuberay/10-rbac.yaml's keti-allocator rules (the emulator
    answers 403 otherwise); a verb outside them is refused."""
    with pytest.raises(client.ApiException) as info:
        cluster["api"].delete_namespaced_pod("x", "default")
    assert info.value.status == 403


def test_an_api_server_outage_is_ridden_out_and_the_watch_resumes(cluster):
    """Connections refused for a second: the watches back off and resume from their last
    resourceVersion (no relist: the history is still there), and then see new changes."""
    admin, sync = cluster["admin"], cluster["sync"]
    pod = create(admin, "survivor", 20)
    assert bind(cluster, pod, "n1") == {"Error": ""}
    wait(lambda: sync.status()["pods_tracked"] == 1, what="the pod seen")
    stats = sync.pod_watch.stats
    lists, errors = stats.lists, stats.errors
    cluster["emu"].outage(1.0)
    admin.delete_namespaced_pod("survivor", "default", grace_period_seconds=0)
    start = time.monotonic()
    wait(lambda: not booked(cluster), timeout=15, what="the release after the outage")
    assert stats.errors > errors and stats.lists == lists
    assert time.monotonic() - start < 12  # the backoff is capped at 10 s
