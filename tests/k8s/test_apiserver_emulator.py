"""The API-server emulator, driven by the official `kubernetes` client, against the documented
API behaviour (list/watch resourceVersions, 410 Gone, bookmarks, binding, patches, status)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client, watch

from .k8s_cluster import core_api


def pod(name: str, node: str | None = None, **meta) -> dict:
    spec: dict = {"containers": [{"name": "main", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, **meta}, "spec": spec}


def node(name: str, **labels) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "status": {"allocatable": {"cpu": "8"}}}


def events(api_fn, *args, **kw) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of a bounded watch."""
    kw.setdefault("timeout_seconds", 1)
    out = []
    for ev in watch.Watch().stream(api_fn, *args, **kw):
        meta = ev["raw_object"]["metadata"]
        out.append((ev["type"], meta.get("name", ""), meta["resourceVersion"]))
    return out


def test_list_then_watch_from_its_resource_version_sees_exactly_the_later_changes(api):
    api.create_namespaced_pod("default", pod("before"))
    listed = api.list_namespaced_pod("default")
    assert [p.metadata.name for p in listed.items] == ["before"]
    rv = listed.metadata.resource_version
    api.create_namespaced_pod("default", pod("after"))
    api.patch_namespaced_pod("before", "default", {"metadata": {"labels": {"x": "1"}}})
    api.delete_namespaced_pod("after", "default")  # unbound: removed at once
    got = events(api.list_namespaced_pod, "default", resource_version=rv)
    assert [(t, n) for t, n, _ in got] == [
        ("ADDED", "after"),
        ("MODIFIED", "before"),
        ("DELETED", "after"),
    ]
    rvs = [int(r) for _, _, r in got]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_without_resource_version_starts_with_the_current_objects(api):
    api.create_node(node("n1"))
    api.create_node(node("n2"))
    got = events(api.list_node)
    assert [(t, n) for t, n, _ in got] == [("ADDED", "n1"), ("ADDED", "n2")]


def test_watch_from_a_compacted_revision_is_410_gone_and_a_relist_recovers(apiserver, api):
    api.create_namespaced_pod("default", pod("a"))
    old = api.list_namespaced_pod("default").metadata.resource_version
    api.create_namespaced_pod("default", pod("b"))
    apiserver.compact()
    with pytest.raises(client.ApiException) as info:
        events(api.list_namespaced_pod, "default", resource_version=old)
    assert info.value.status == 410
    assert "too old resource version" in info.value.reason
    relisted = api.list_namespaced_pod("default")
    assert sorted(p.metadata.name for p in relisted.items) == ["a", "b"]
    api.create_namespaced_pod("default", pod("c"))
    got = events(
        api.list_namespaced_pod, "default", resource_version=relisted.metadata.resource_version
    )
    assert [(t, n) for t, n, _ in got] == [("ADDED", "c")]


def test_exact_list_below_compaction_is_410_and_a_future_revision_is_504(apiserver, api):
    api.create_node(node("n1"))
    rv = api.list_node().metadata.resource_version
    api.create_node(node("n2"))
    apiserver.compact()
    with pytest.raises(client.ApiException) as info:
        api.list_node(resource_version=rv, resource_version_match="Exact")
    assert info.value.status == 410
    with pytest.raises(client.ApiException) as info:
        api.list_node(resource_version=str(apiserver.current_rv() + 100))
    assert info.value.status == 504


def test_bookmarks_only_when_asked_and_they_carry_the_progress_of_other_changes(api):
    rv = api.list_namespaced_pod("default").metadata.resource_version
    api.create_namespaced_pod("other", pod("elsewhere"))  # not this watch's namespace
    plain = events(api.list_namespaced_pod, "default", resource_version=rv)
    assert plain == []
    marked = events(
        api.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True
    )
    assert marked and {t for t, _, _ in marked} == {"BOOKMARK"}
    assert int(marked[-1][2]) > int(rv)  # the other namespace's write advanced it


def test_the_clients_watch_resumes_from_a_bookmark(api):
    rv = api.list_namespaced_pod("default").metadata.resource_version
    api.create_namespaced_pod("other", pod("elsewhere"))
    w = watch.Watch()
    for _ in w.stream(
        api.list_namespaced_pod,
        "default",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    ):
        pass
    assert int(w.resource_version) > int(rv)


def test_binding_sets_the_node_once_and_copies_annotations(api):
    api.create_namespaced_pod("default", pod("p"))
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "p", "annotations": {"keti.re.kr/x": "1"}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
    }
    resp = api.create_namespaced_pod_binding("p", "default", body, _preload_content=False)
    assert resp.status == 201
    bound = api.read_namespaced_pod("p", "default")
    assert bound.spec.node_name == "n1"
    assert bound.metadata.annotations["keti.re.kr/x"] == "1"
    assert [(c.type, c.status) for c in bound.status.conditions] == [("PodScheduled", "True")]
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_pod_binding("p", "default", body, _preload_content=False)
    assert info.value.status == 409 and "already assigned" in info.value.body
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_pod_binding("nope", "default", body, _preload_content=False)
    assert info.value.status == 404


def test_binding_with_a_stale_uid_is_a_conflict(api):
    api.create_namespaced_pod("default", pod("p"))
    body = {"metadata": {"name": "p", "uid": "not-the-uid"}, "target": {"name": "n1"}}
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_pod_binding("p", "default", body, _preload_content=False)
    assert info.value.status == 409
    assert api.read_namespaced_pod("p", "default").spec.node_name is None


def test_patches_strategic_merge_json_and_json_patch(api):
    api.create_namespaced_pod("default", pod("p", annotations={"keep": "1", "drop": "2"}))
    api.patch_namespaced_pod(
        "p", "default", {"metadata": {"annotations": {"drop": None, "new": "3"}}}
    )
    assert api.read_namespaced_pod("p", "default").metadata.annotations == {"keep": "1", "new": "3"}
    api.patch_namespaced_pod(
        "p",
        "default",
        {"metadata": {"labels": {"l": "v"}}},
        _content_type="application/merge-patch+json",
    )
    api.patch_namespaced_pod(
        "p", "default", [{"op": "add", "path": "/metadata/annotations/j", "value": "4"}]
    )
    got = api.read_namespaced_pod("p", "default")
    assert got.metadata.labels == {"l": "v"} and got.metadata.annotations["j"] == "4"
    with pytest.raises(client.ApiException) as info:
        api.patch_namespaced_pod(
            "p", "default", [{"op": "test", "path": "/metadata/labels/l", "value": "other"}]
        )
    assert info.value.status == 422


def test_strategic_merge_merges_containers_by_name(api):
    body = pod("p")
    body["spec"]["containers"].append({"name": "side", "image": "old"})
    api.create_namespaced_pod("default", body)
    api.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "side", "image": "new"}]}}
    )
    got = api.read_namespaced_pod("p", "default").spec.containers
    assert [(c.name, c.image) for c in got] == [("main", "busybox"), ("side", "new")]


def test_pod_spec_is_immutable_except_images_and_node_is_set_only_by_binding(api):
    api.create_namespaced_pod("default", pod("p"))
    with pytest.raises(client.ApiException) as info:
        api.patch_namespaced_pod("p", "default", {"spec": {"nodeName": "n1"}})
    assert info.value.status == 422 and "spec.nodeName" in info.value.body
    assert api.read_namespaced_pod("p", "default").spec.node_name is None


def test_status_subresource_alone_changes_status(api):
    api.create_namespaced_pod("default", pod("p", node="n1"))
    api.patch_namespaced_pod("p", "default", {"status": {"phase": "Running"}})
    assert api.read_namespaced_pod("p", "default").status.phase == "Pending"
    api.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Succeeded"}})
    assert api.read_namespaced_pod("p", "default").status.phase == "Succeeded"


def test_update_with_a_stale_resource_version_is_a_conflict(api):
    api.create_node(node("n1"))
    first = api.read_node("n1")
    api.patch_node("n1", {"metadata": {"labels": {"a": "1"}}})
    first.metadata.labels = {"b": "2"}
    with pytest.raises(client.ApiException) as info:
        api.replace_node("n1", first)
    assert info.value.status == 409
    fresh = api.read_node("n1")
    fresh.metadata.labels = {"b": "2"}
    assert api.replace_node("n1", fresh).metadata.labels == {"b": "2"}


def test_node_status_update_changes_allocatable(api):
    api.create_node(node("n1"))
    api.patch_node_status("n1", {"status": {"allocatable": {"keti.re.kr/gpu-pct": "800"}}})
    assert api.read_node("n1").status.allocatable == {"cpu": "8", "keti.re.kr/gpu-pct": "800"}


def test_selectors(api):
    api.create_node(node("gpu1", **{"keti.re.kr/gpu-node": "true"}))
    api.create_node(node("cpu1"))
    assert [
        n.metadata.name for n in api.list_node(label_selector="keti.re.kr/gpu-node=true").items
    ] == ["gpu1"]
    assert [
        n.metadata.name for n in api.list_node(label_selector="!keti.re.kr/gpu-node").items
    ] == ["cpu1"]
    api.create_namespaced_pod("default", pod("on1", node="gpu1"))
    api.create_namespaced_pod("default", pod("free"))
    on = api.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu1").items
    assert [p.metadata.name for p in on] == ["on1"]
    with pytest.raises(client.ApiException) as info:
        api.list_pod_for_all_namespaces(field_selector="spec.unknown=1")
    assert info.value.status == 400


def test_deleting_a_bound_pod_is_graceful_then_gone(api):
    api.create_namespaced_pod("default", pod("p", node="n1"))
    rv = api.list_namespaced_pod("default").metadata.resource_version
    api.delete_namespaced_pod("p", "default")
    time.sleep(0.2)
    got = events(api.list_namespaced_pod, "default", resource_version=rv)
    assert [t for t, _, _ in got] == ["MODIFIED", "DELETED"]
    with pytest.raises(client.ApiException) as info:
        api.read_namespaced_pod("p", "default")
    assert info.value.status == 404


def test_create_twice_is_already_exists_and_create_clears_pod_status(api):
    body = pod("p")
    body["status"] = {"phase": "Running"}
    assert api.create_namespaced_pod("default", body).status.phase == "Pending"
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_pod("default", body)
    assert info.value.status == 409 and "AlreadyExists" in info.value.body


def test_rbac_rules_bound_to_a_token_are_enforced_and_calls_recorded(apiserver):
    apiserver.authorize(
        "reader", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
    )
    admin = core_api(apiserver.url)
    admin.create_node(node("n1"))
    reader = core_api(apiserver.url, token="reader")
    assert [n.metadata.name for n in reader.list_node().items] == ["n1"]
    with pytest.raises(client.ApiException) as info:
        reader.patch_node("n1", {"metadata": {"labels": {"a": "1"}}})
    assert info.value.status == 403 and "cannot patch resource" in info.value.body
    with pytest.raises(client.ApiException) as info:
        core_api(apiserver.url, token="stranger").list_node()
    assert info.value.status == 401
    verbs = [(c.verb, c.resource) for c in apiserver.calls_by("reader")]
    assert verbs == [("list", "nodes"), ("patch", "nodes")]


def test_a_live_watch_sees_a_change_within_a_fraction_of_a_second(api):
    import threading

    rv = api.list_namespaced_pod("default").metadata.resource_version
    seen: list[float] = []

    def watcher():
        for ev in watch.Watch().stream(
            api.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=2
        ):
            if ev["type"] == "ADDED":
                seen.append(time.monotonic())
                return

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.2)
    created = time.monotonic()
    api.create_namespaced_pod("default", pod("live"))
    t.join(3)
    assert seen and seen[0] - created < 0.5


def test_a_held_watch_is_sent_nothing_even_while_waiting_and_gets_410_after_compaction(
    apiserver, api
):
    """`hold_watches()` stalls a watch that is already blocked waiting for changes (the usual
    state of an idle watch), so a test can compact history behind it and see the 410."""
    import threading

    rv = api.list_namespaced_pod("default").metadata.resource_version
    seen: list[str] = []
    statuses: list[int] = []

    def watcher():
        try:
            for ev in watch.Watch().stream(
                api.list_namespaced_pod,
                "default",
                resource_version=rv,
                timeout_seconds=5,
                allow_watch_bookmarks=True,  # the watch then waits up to a bookmark interval
            ):
                if ev["type"] != "BOOKMARK":
                    seen.append(ev["type"])
        except client.ApiException as exc:
            statuses.append(exc.status)

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.3)  # the watch is open and waiting for a change
    apiserver.hold_watches()
    try:
        api.create_namespaced_pod("default", pod("while-held"))
        time.sleep(0.7)
        assert seen == [], "a held watch delivered an event"
        apiserver.compact()
    finally:
        apiserver.release_watches()
    t.join(6)
    assert not t.is_alive()
    assert seen == [] and statuses == [410]
