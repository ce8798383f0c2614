"""The served allocator over real HTTP on a real (local) Ray cluster."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import httpx
import pytest
import ray
from ray import serve

from serve.app import AllocatorIngress
from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME, ClusterSource

from ..factories import local_serve

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One Ray + Serve for the module: the allocator at /, a token-protected twin at /secure."""
    journal = tmp_path_factory.mktemp("state") / "journal.jsonl"
    with local_serve() as port:
        source = ClusterSource(sim_nodes=3, journal=str(journal))
        serve.run(AllocatorIngress.bind(source), name="alloc", route_prefix="/")
        serve.run(
            AllocatorIngress.options(name="Secure").bind(source, TOKEN),
            name="secure",
            route_prefix="/secure",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, port, source


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
    assert body["sm_pct"] == 47 and body["policy"] == "fgd" and body["decision_ms"] >= 0
    assert body["env"]["BLESS_LIMIT_PCT"] == "47" and len(body["gpus"]) == 1
    gpu = body["gpus"][0]
    parts = client.get("/partition").json()["nodes"][body["node"]]["gpus"][gpu["index"]]
    assert {"pod": "rt", "sm_pct": 47, "milli": 470, "mechanism": "mps"} in parts["partitions"]
    assert client.post("/release", json={"pod": "rt"}).json() == {"pod": "rt", "released": True}
    assert client.post("/release", json={"pod": "rt"}).json()["released"] is False  # idempotent
    parts = client.get("/partition").json()["nodes"][body["node"]]["gpus"][gpu["index"]]
    assert all(p["pod"] != "rt" for p in parts["partitions"])


@pytest.mark.parametrize(
    ("pod", "field"),
    [
        ({"cpu_milli": -1}, "cpu_milli"),
        ({"gpu_milli": 1500}, "gpu_milli"),
        ({"num_gpu": 9, "gpu_milli": 1000}, "num_gpu"),
        ({"surprise": 1}, "surprise"),
        ({"cpu_milli": "100"}, "cpu_milli"),
    ],
)
def test_bad_input_is_422_naming_the_field(served, pod, field):
    client, _, _ = served
    base = {"name": "bad", "cpu_milli": 1000, "memory_mib": 1024, "num_gpu": 1, "gpu_milli": 100}
    r = client.post("/allocate", json={"pod": {**base, **pod}})
    assert r.status_code == 422
    assert any(field in err["loc"] for err in r.json()["detail"]), r.json()
    assert all(set(err) == {"loc", "msg", "type"} for err in r.json()["detail"])  # no echo


def test_rule_errors_and_oversized_body(served):
    client, _, _ = served
    r = alloc(client, "two-halves", num=2, milli=500)
    assert r.status_code == 422 and "gpu_milli must be 1000 when num_gpu > 1" in r.text
    big = {
        "pods": [
            {"name": f"p{i}", "cpu_milli": 1, "memory_mib": 1, "padding": "x" * 200}
            for i in range(6000)
        ]
    }
    r = client.post("/allocate", json=big)
    assert r.status_code == 422 and "larger than 1 MB" in r.text
    assert r.json()["detail"][0]["loc"] == ["body"]


def test_nofit_is_409_and_dry_run_books_nothing(served):
    client, _, _ = served
    before = client.get("/health").json()["placements"]
    r = alloc(client, "dry", num=8, milli=1000, dry_run=True)
    assert r.status_code == 200 and r.json()["dry_run"] is True
    assert client.get("/health").json()["placements"] == before
    r = client.post(
        "/allocate", json={"pod": {"name": "cpu-hog", "cpu_milli": 10**9, "memory_mib": 1}}
    )
    assert r.status_code == 409 and "no node can host pod 'cpu-hog'" in r.json()["detail"]


def test_batch_decides_in_order(served):
    client, _, _ = served
    pods = [
        {"name": f"b{i}", "cpu_milli": 100, "memory_mib": 64, "num_gpu": 1, "gpu_milli": 500}
        for i in range(10)
    ]
    r = client.post("/allocate", json={"pods": pods})
    assert r.status_code == 200
    body = r.json()
    assert [x["pod"] for x in body["results"]] == [p["name"] for p in pods]
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


def test_auth_required_except_health(served):
    client, _, _ = served
    assert client.get("/secure/health").status_code == 200
    assert client.get("/secure/partition").status_code == 401
    assert (
        client.get("/secure/partition", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    ok = client.get("/secure/partition", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "nodes" in ok.json()
    r = client.post(
        "/secure/allocate", json={"pod": {"name": "x", "cpu_milli": 1, "memory_mib": 1}}
    )
    assert r.status_code == 401


def test_extender_filter_and_prioritize(served):
    client, _, _ = served
    pod = {
        "metadata": {"name": "ext", "namespace": "ml"},
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
    bad = client.post("/scheduler/filter", json={"Pod": pod}).json()
    assert "NodeNames or Nodes.items" in bad["Error"]


def test_metrics_are_prometheus_text(served):
    client, _, _ = served
    text = client.get("/metrics").text
    assert (
        "keti_allocator_decisions_total" in text
        and "keti_allocator_decision_seconds_bucket" in text
    )


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
    serve.run(AllocatorIngress.bind(source), name="alloc", route_prefix="/")  # back to fgd


def test_state_actor_comes_back_with_its_placements(served):
    client, _, _ = served
    assert alloc(client, "survivor", milli=600).status_code == 200
    actor = ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE)
    ray.kill(actor, no_restart=False)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            r = client.get("/partition", timeout=10)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pods = {
        p["pod"] for n in r.json()["nodes"].values() for g in n["gpus"] for p in g["partitions"]
    }
    assert "survivor" in pods
    client.post("/release", json={"pod": "survivor"})
