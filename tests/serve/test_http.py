"""The served allocator over real HTTP on a real (local) Ray cluster."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import pytest
import ray
from ray import serve

from keti_ray.rl.policy import SHIPPED_CHECKPOINT_SHA256
from serve.app import AllocatorIngress
from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME, ClusterSource

SHIPPED_PPO = "ppo@" + SHIPPED_CHECKPOINT_SHA256[:12]

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_session):
    """The package's Ray + Serve: the allocator at /, a token-protected twin at /secure."""
    state = tmp_path_factory.mktemp("state") / "bookings.db"
    port = serve_session.port
    try:
        source = ClusterSource(sim_nodes=3, state=str(state))
        secure = AllocatorIngress.options(name="Secure").bind(source, TOKEN)
        serve.run_many(  # both deployed at once
            [
                serve.RunTarget(AllocatorIngress.bind(source), name="alloc", route_prefix="/"),
                serve.RunTarget(secure, name="secure", route_prefix="/secure"),
            ]
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, port, source
    finally:
        serve_session.clean()


def alloc(client, name, num=1, milli=250, **extra):
    body = {
        "pod": {
            "name": name,
            "cpu_milli": 1000,
            "memory_mib": 1024,
            "num_gpu": num,
            "gpu_milli": milli,
        }
    }
    body.update(extra)
    return client.post("/allocate", json=body)


def test_allocate_partition_release_roundtrip(served):
    client, _, _ = served
    r = alloc(client, "rt", milli=470)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pod"] == "default/rt" and body["existing"] is False
    # The deployment's default policy is the shipped PPO checkpoint, by its listing digest.
    assert body["sm_pct"] == 47 and body["policy"] == SHIPPED_PPO and body["decision_ms"] >= 0
    assert body["env"]["BLESS_LIMIT_PCT"] == "47" and len(body["gpus"]) == 1
    gpu = body["gpus"][0]
    assert gpu["uuid"].startswith("GPU-") and gpu["milli"] == 470
    parts = client.get("/partition").json()["nodes"][body["node"]]["gpus"][gpu["index"]]
    mine = [p for p in parts["partitions"] if p["pod"] == "default/rt"]
    assert len(mine) == 1 and mine[0]["milli"] == 470 and mine[0]["mechanism"] == "mps"
    booked = {b["pod"]: b for b in client.get("/bookings").json()}
    assert booked["default/rt"]["node"] == body["node"]
    assert booked["default/rt"]["gpus"] == [{"uuid": gpu["uuid"], "milli": 470}]
    r = client.post("/release", json={"pod": "rt"})
    assert r.json() == {"pod": "default/rt", "released": True}
    assert client.post("/release", json={"pod": "default/rt"}).json()["released"] is False
    parts = client.get("/partition").json()["nodes"][body["node"]]["gpus"][gpu["index"]]
    assert all(p["pod"] != "default/rt" for p in parts["partitions"])


def test_allocate_is_idempotent_over_http(served):
    client, _, _ = served
    first = alloc(client, "same", milli=300, dry_run=False)
    again = alloc(client, "same", milli=300)
    assert first.status_code == again.status_code == 200
    assert again.json()["existing"] is True
    assert (again.json()["node"], again.json()["gpus"]) == (
        first.json()["node"],
        first.json()["gpus"],
    )
    other = alloc(client, "same", milli=600)
    assert other.status_code == 409 and "pod 'default/same' is booked already" in other.text
    assert other.json()["pod"] == "default/same" and other.json()["conflict"] is True
    client.post("/release", json={"pod": "same"})


def test_nofit_is_409_and_dry_run_books_nothing(served):
    client, _, _ = served
    before = client.get("/health").json()["placements"]
    r = alloc(client, "dry", num=8, milli=1000, dry_run=True)
    assert r.status_code == 200 and r.json()["dry_run"] is True
    assert client.get("/health").json()["placements"] == before
    r = client.post(
        "/allocate", json={"pod": {"name": "cpu-hog", "cpu_milli": 10**7, "memory_mib": 1}}
    )
    assert r.status_code == 409 and "can host pod 'default/cpu-hog'" in r.json()["detail"]


def test_batch_decides_in_order(served):
    client, _, _ = served
    pods = [
        {"name": f"b{i}", "cpu_milli": 100, "memory_mib": 64, "num_gpu": 1, "gpu_milli": 500}
        for i in range(10)
    ]
    r = client.post("/allocate", json={"pods": pods})
    assert r.status_code == 200
    body = r.json()
    assert [x["pod"] for x in body["results"]] == [f"default/{p['name']}" for p in pods]
    assert body["placed"] == 10
    for p in pods:
        client.post("/release", json={"pod": p["name"]})


def test_concurrent_requests_never_double_book(served):
    client, port, _ = served

    # 3 sim nodes hold 8 + 4 + 2 = 14 GPUs; 60 pods of 300 milli fit 3 per GPU = 42 at most.
    def one(i):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            return alloc(c, f"c{i}", milli=300).status_code

    with cf.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(60)))
    assert set(codes) <= {200, 409}
    nodes = client.get("/partition").json()["nodes"]
    for node in nodes.values():
        for gpu in node["gpus"]:
            assert sum(p["milli"] for p in gpu["partitions"]) + gpu["free_milli"] == 1000
    placed = sum(len(g["partitions"]) for n in nodes.values() for g in n["gpus"])
    assert placed == codes.count(200) == 42
    for i in range(60):
        client.post("/release", json={"pod": f"c{i}"})


def test_auth_on_every_route_but_health_and_ready(served):
    client, _, _ = served
    assert client.get("/secure/health").status_code == 200
    assert client.get("/secure/ready").status_code == 200
    for path in ("/partition", "/bookings", "/metrics", "/docs", "/redoc", "/openapi.json"):
        assert client.get(f"/secure{path}").status_code == 401, path
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/partition", "/docs", "/openapi.json"):
        assert client.get(f"/secure{path}", headers=headers).status_code == 200, path
    assert "/allocate" in client.get("/secure/openapi.json", headers=headers).json()["paths"]
    r = client.post(
        "/secure/allocate", json={"pod": {"name": "x", "cpu_milli": 1, "memory_mib": 1}}
    )
    assert r.status_code == 401
    r = client.post("/secure/scheduler/filter", json={"Pod": {}, "NodeNames": []})
    assert r.status_code == 401


def test_extender_filter_and_prioritize(served):
    client, _, _ = served
    pod = {
        "metadata": {"name": "ext", "namespace": "ml", "uid": "1234-abcd"},
        "spec": {
            "containers": [
                {
                    "resources": {
                        "requests": {"cpu": "2", "memory": "4Gi", "keti.re.kr/gpu-pct": "400"}
                    }
                }
            ]
        },
    }
    args = {"Pod": pod, "NodeNames": ["sim-node-00", "sim-node-01", "sim-node-02", "other"]}
    r = client.post("/scheduler/filter", json=args).json()
    assert r["NodeNames"] == ["sim-node-00", "sim-node-01"]  # the T4 node has only 2 GPUs
    assert set(r["FailedNodes"]) == {"sim-node-02", "other"} and r["Error"] == ""
    nodes = {"items": [{"metadata": {"name": n}} for n in ("sim-node-00", "sim-node-02")]}
    r = client.post("/scheduler/filter", json={"pod": pod, "nodes": nodes}).json()
    assert [n["metadata"]["name"] for n in r["Nodes"]["items"]] == ["sim-node-00"]
    prio = client.post("/scheduler/prioritize", json=args).json()
    assert {p["Host"] for p in prio} == set(args["NodeNames"])
    assert max(p["Score"] for p in prio) == 10 and all(0 <= p["Score"] <= 10 for p in prio)
    bad = client.post("/scheduler/filter", json={"Pod": pod})
    assert bad.status_code == 422 and "NodeNames or Nodes.items" in bad.json()["Error"]


def test_metrics_use_the_contract_names(served):
    client, _, _ = served
    alloc(client, "m-bad", milli=5000)  # refused by validation: counted
    text = client.get("/metrics").text
    for name in (
        "keti_allocator_decisions_total",
        "keti_allocator_decision_duration_seconds_bucket",
        "keti_allocator_releases_total",
        "keti_allocator_set_aside_bookings",
        "keti_cluster_unallocated_gpu_ratio",
        "keti_cluster_fragmentation_ratio",
        "keti_cluster_pods_placed",
        f'keti_allocator_info{{policy="{SHIPPED_PPO}"}} 1.0',
    ):
        assert name in text, name
    assert 'outcome="refused"' in text and 'outcome="nofit"' in text


def test_hot_reload_without_failed_requests(served):
    client, port, source = served
    failures, done = [], threading.Event()

    def hammer():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            i = 0
            while not done.is_set():
                r = alloc(c, f"hr{i}", milli=100, dry_run=True)
                if r.status_code != 200:
                    failures.append(r.status_code)
                i += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        serve.run(
            AllocatorIngress.options(user_config={"policy": "bestfit"}).bind(source),
            name="alloc",
            route_prefix="/",
        )
        deadline = time.time() + 60
        while client.get("/health").json()["policy"] != "bestfit" and time.time() < deadline:
            time.sleep(0.2)
    finally:
        done.set()
        worker.join()
    assert client.get("/health").json()["policy"] == "bestfit"
    assert failures == []


def wait_ready(client, deadline_s: float = 60) -> None:
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        try:
            if client.get("/ready", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the allocator did not come back")


def test_restarted_actor_keeps_bookings_and_the_promoted_policy(served, tmp_path):
    from keti_ray.promotion import write_pointer

    client, _, source = served
    pointer = tmp_path / "serving.json"
    write_pointer(pointer, None, None, policy="packing")
    serve.run(
        AllocatorIngress.options(user_config={"pointer": str(pointer)}).bind(source),
        name="alloc",
        route_prefix="/",
    )
    assert alloc(client, "survivor", milli=600).status_code == 200
    write_pointer(pointer, None, None, policy="clustering")  # a retrain promotes
    deadline = time.time() + 30
    while client.get("/health").json()["policy"] != "clustering" and time.time() < deadline:
        time.sleep(0.3)
    assert client.get("/health").json()["policy"] == "clustering"
    # A pointer naming a missing checkpoint: the current policy stays, /health says why.
    write_pointer(pointer, tmp_path / "missing-ckpt", "0" * 64, policy="ppo")
    deadline = time.time() + 30
    while not client.get("/health").json()["policy_error"] and time.time() < deadline:
        time.sleep(0.3)
    health = client.get("/health").json()
    assert health["policy"] == "clustering" and "missing-ckpt" in health["policy_error"]
    write_pointer(pointer, None, None, policy="clustering")
    actor = ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE)
    ray.kill(actor, no_restart=False)
    wait_ready(client)
    health = client.get("/health").json()
    assert health["policy"] == "clustering"  # persisted, not FGD again
    assert "default/survivor" in {b["pod"] for b in client.get("/bookings").json()}
    client.post("/release", json={"pod": "survivor"})
    serve.run(AllocatorIngress.bind(source), name="alloc", route_prefix="/")  # back to fgd


def test_a_failing_commit_is_503_books_nothing_and_the_next_request_works(served):
    import sqlite3

    client, _, _ = served
    actor = ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE)

    def fail_commits(self):
        real = self.service.store._commit
        self.service.store._real_commit = real

        def commit():
            raise sqlite3.OperationalError("disk I/O error")

        self.service.store._commit = commit

    def restore(self):
        self.service.store._commit = self.service.store._real_commit

    before = client.get("/partition").json()
    ray.get(actor.__ray_call__.remote(fail_commits))
    try:
        r = alloc(client, "eio", milli=300)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "nothing was booked" in r.json()["detail"] and r.json()["pod"] == "default/eio"
        assert client.get("/partition").json() == before
    finally:
        ray.get(actor.__ray_call__.remote(restore))
    again = alloc(client, "eio", milli=300)
    assert again.status_code == 200 and again.json()["existing"] is False
    assert 'keti_allocator_store_errors_total{op="commit"}' in client.get("/metrics").text
    client.post("/release", json={"pod": "eio"})


# ---- bad input: every case is a 4xx and changes nothing ------------------------------------

GOOD_POD = {"name": "ok", "cpu_milli": 1000, "memory_mib": 1024, "num_gpu": 1, "gpu_milli": 100}
EXT_POD = {
    "metadata": {"name": "e", "namespace": "ml"},
    "spec": {"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
}


def ext(containers=None, meta=None, **args):
    pod = {"metadata": meta or EXT_POD["metadata"], "spec": {"containers": containers}}
    if containers is None:
        pod = EXT_POD if meta is None else {**EXT_POD, "metadata": meta}
    return {"Pod": pod, "NodeNames": ["sim-node-00"], **args}


def res(**requests):
    return [{"resources": {"requests": requests}}]


def raw(path, text, ctype="application/json"):
    return ("POST", path, text.encode() if isinstance(text, str) else text, ctype)


def js(path, obj):
    return raw(path, json.dumps(obj))


def pod_with(**fields):
    return js("/allocate", {"pod": {**GOOD_POD, **fields}})


BAD_INPUTS = {
    # JSON itself
    "truncated json": raw("/allocate", "{"),
    "not utf-8": raw("/allocate", b'{"pod": "\xff"}'),
    "nan": raw("/allocate", '{"pod": {"name": "a", "cpu_milli": NaN, "memory_mib": 1}}'),
    "duplicate keys": raw(
        "/allocate", '{"pod": {"name": "a", "cpu_milli": 1, "memory_mib": 1}, "pod": {}}'
    ),
    "deep nesting": raw("/allocate", '{"pod": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "wrong content-type": raw("/allocate", json.dumps({"pod": GOOD_POD}), "text/plain"),
    "no content-type": raw("/allocate", json.dumps({"pod": GOOD_POD}), None),
    "array body": js("/allocate", [GOOD_POD]),
    # fields
    "negative cpu": pod_with(cpu_milli=-1),
    "gpu_milli 1500": pod_with(gpu_milli=1500),
    "num_gpu 9": pod_with(num_gpu=9, gpu_milli=1000),
    "unknown field": pod_with(surprise=1),
    "cpu as string": pod_with(cpu_milli="100"),
    "cpu 2**64": pod_with(cpu_milli=2**64),
    "memory 10**400": raw(
        "/allocate", '{"pod": {"name": "a", "cpu_milli": 1, "memory_mib": 1' + "0" * 400 + "}}"
    ),
    "float cpu 1e400": raw(
        "/allocate", '{"pod": {"name": "a", "cpu_milli": 1e400, "memory_mib": 1}}'
    ),
    "two halves": pod_with(num_gpu=2, gpu_milli=500),
    "name upper case": pod_with(name="Big"),
    "name with slash": pod_with(name="a/b"),
    "name too long": pod_with(name="a" * 254),
    "namespace ../..": pod_with(namespace="../.."),
    "namespace control chars": pod_with(namespace="ml\n\x00"),
    "uid garbage": pod_with(uid="x" * 500),
    "node unknown": js("/allocate", {"pod": GOOD_POD, "node": "nope"}),
    "node bad name": js("/allocate", {"pod": GOOD_POD, "node": "NOPE!"}),
    "both forms": js("/allocate", {"pod": GOOD_POD, "pods": [GOOD_POD]}),
    "neither form": js("/allocate", {"dry_run": False}),
    "dry_run as string": js("/allocate", {"pod": GOOD_POD, "dry_run": "yes"}),
    "duplicate pods in batch": js("/allocate", {"pods": [GOOD_POD, GOOD_POD]}),
    "gpu_spec too long": pod_with(gpu_spec=["x" * 100]),
    "release bad key": js("/release", {"pod": "../../etc"}),
    "release extra field": js("/release", {"pod": "a", "force": True}),
    "release empty": js("/release", {}),
    # extender (the and more)
    "ext truncated": raw("/scheduler/filter", "{"),
    "ext cpu Infinity": js("/scheduler/filter", ext(res(cpu="Infinity"))),
    "ext cpu NaN": js("/scheduler/filter", ext(res(cpu="NaN"))),
    "ext cpu 1e400": js("/scheduler/filter", ext(res(cpu="1e400"))),
    "ext memory huge": js("/scheduler/filter", ext(res(memory="9" * 60 + "Ei"))),
    "ext quantity long": js("/scheduler/filter", ext(res(cpu="1" * 500))),
    "ext cpu negative": js("/scheduler/filter", ext(res(cpu="-1"))),
    "ext cpu object": js("/scheduler/filter", ext(res(cpu={"a": 1}))),
    "ext limits string": js("/scheduler/filter", ext([{"resources": {"limits": "ab"}}])),
    "ext resources list": js("/scheduler/filter", ext([{"resources": []}])),
    "ext container string": js("/scheduler/filter", ext(["c"])),
    "ext containers object": js("/scheduler/filter", ext({"a": 1})),
    "ext gpu half unit": js("/scheduler/prioritize", ext(res(**{"keti.re.kr/gpu-pct": "0.5"}))),
    "ext gpu 250 units": js("/scheduler/filter", ext(res(**{"keti.re.kr/gpu-pct": "250"}))),
    "ext gpu 10000 units": js("/scheduler/filter", ext(res(**{"keti.re.kr/gpu-pct": "10000"}))),
    "ext pod missing": js("/scheduler/filter", {"NodeNames": ["sim-node-00"]}),
    "ext pod list": js("/scheduler/filter", {"Pod": [], "NodeNames": []}),
    "ext metadata string": js("/scheduler/filter", ext(meta="x")),
    "ext name missing": js("/scheduler/filter", ext(meta={"namespace": "ml"})),
    "ext namespace ../..": js("/scheduler/filter", ext(meta={"name": "a", "namespace": "../.."})),
    "ext name control": js("/scheduler/filter", ext(meta={"name": "a\u0000b"})),
    "ext uid number": js("/scheduler/filter", ext(meta={"name": "a", "uid": 5})),
    "ext nodenames ints": js("/scheduler/filter", {**ext(), "NodeNames": [1, 2]}),
    "ext nodenames string": js("/scheduler/filter", {**ext(), "NodeNames": "a"}),
    "ext nodes items bad": js(
        "/scheduler/filter", {"Pod": EXT_POD, "Nodes": {"items": [{"metadata": 3}]}}
    ),
    "ext args array": js("/scheduler/prioritize", [1, 2]),
    "ext prioritize bad": js("/scheduler/prioritize", ext(res(cpu="Infinity"))),
}


def chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_bad_input_table_is_4xx_and_changes_nothing(served):
    client, port, _ = served
    alloc(client, "standing", milli=200)
    before = client.get("/partition").json()
    failures = {}
    for case, (method, path, body, ctype) in BAD_INPUTS.items():
        headers = {"content-type": ctype} if ctype else {}
        r = client.request(method, path, content=body, headers=headers)
        if not 400 <= r.status_code < 500:
            failures[case] = (r.status_code, r.text[:200])
        elif len(r.content) > 2000:
            failures[case] = ("long answer", len(r.content))
        elif r.status_code == 422:
            detail = r.json()["detail"]
            assert isinstance(detail, list) and all("loc" in d and "msg" in d for d in detail), case
    assert failures == {}
    # Bodies over 1 MB: 413 while streaming (chunked, no length) and from Content-Length.
    big = client.post(
        "/allocate", content=chunks(3 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and "larger than 1 MB" in big.text
    sized = client.post(
        "/allocate", content=b" " * (1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert sized.status_code == 413
    # Auth variants against the token-protected twin.
    for header in (
        None,
        "Bearer nope",
        "Basic " + TOKEN,
        "Bearer",
        f"Bearer {TOKEN}x",
        "Bearer t\u00f6ken",
        "Bearer " + "\u00e9" * 5000,
    ):
        headers = {"authorization": header.encode("latin-1", "replace")} if header else {}
        r = httpx.get(f"http://127.0.0.1:{port}/secure/partition", headers=headers, timeout=30)
        assert r.status_code == 401, (header[:20] if header else header, r.status_code)
    raw_utf8 = [(b"authorization", "Bearer t\u00f6ken".encode())]
    r = httpx.get(f"http://127.0.0.1:{port}/secure/partition", headers=raw_utf8, timeout=30)
    assert r.status_code == 401
    assert client.get("/partition").json() == before
    client.post("/release", json={"pod": "standing"})
