"""POST /telemetry over real HTTP on a real local Ray + Serve, fed by the stand-alone agent's
own push client (keti_ray/agent/telemetry.py's HttpSink) with a simulated node's samples:
the rows reach the telemetry store once, a re-sent batch is dropped (also after the state
actor was killed and came back), and bad bodies are 4xx naming the field."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import httpx
import pytest
import ray
from ray import serve

from keti_ray.agent.standalone import TELEMETRY_PATH
from keti_ray.agent.telemetry import HttpSink, ListSink, TelemetrySampler
from keti_ray.deviceplugin.nvml import SimulatedBackend
from keti_ray.telemetry import TelemetryStore
from serve.app import AllocatorIngress
from serve.state import RAY_NAMESPACE, STATE_ACTOR_NAME, ClusterSource

TOKEN = "node-push-token"
NODE = "gpu-node-a"


@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_session):
    root = tmp_path_factory.mktemp("alloc")
    source = ClusterSource(
        sim_nodes=2, state=str(root / "bookings.db"), telemetry_dir=str(root / "telemetry")
    )
    try:
        serve.run(AllocatorIngress.bind(source, TOKEN), name="alloc", route_prefix="/")
        url = f"http://127.0.0.1:{serve_session.port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, url, root / "telemetry"
    finally:
        serve_session.clean()


def node_batch() -> tuple[list[dict], list[dict]]:
    """What a simulated node's sampler produces: GPU records and one allocation record."""
    backend = SimulatedBackend(2, seed=NODE)
    gpus = backend.discover()
    share = {
        "gpu_uuid": gpus[0].uuid,
        "allocation_id": "alloc-1",
        "pod": "team/train-1",
        "units": 30,
        "sm_pct_booked": 30,
        "sms_booked": 38,
        "sms_granted": 33,
        "sms_device": 132,
        "mechanism": "mps",
        "reported_by_shim": True,
    }
    sampler = TelemetrySampler(
        NODE,
        backend,
        gpus,
        ListSink(),
        units_by_gpu=lambda: {gpus[0].uuid: 30},
        partition=lambda: [share],
    )
    return [asdict(g) for g in gpus], sampler.sample()


def samples(root, want: int, timeout_s: float = 30.0) -> list[dict]:
    """The telemetry store's sample rows once `want` of them are there (written off the
    request path), or what is there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if (root / "wal").exists():
            rows = TelemetryStore(root, writer="reader").read("samples").to_pylist()
            if len(rows) >= want:
                break
        time.sleep(0.2)
    return rows


def wait_ready(client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("allocator not ready again")


def test_agent_push_is_stored_once_and_a_resent_batch_is_dropped(served):
    client, url, root = served
    inventory, records = node_batch()
    gpu_uuids = sorted(g["uuid"] for g in inventory)
    sink = HttpSink(url + TELEMETRY_PATH, NODE, inventory, token=TOKEN)
    try:
        sink.put(records)
        assert sink.flush(30.0), f"push did not get through ({sink.failures} failures)"
        assert sink.sent == 1
        rows = samples(root, want=3)
        assert sorted(r["gpu_uuid"] for r in rows if r["pod"] is None) == gpu_uuids
        (share,) = [r for r in rows if r["pod"] is not None]
        assert share["pod"] == "team/train-1" and share["mechanism"] == "mps"
        assert share["sm_pct_granted"] == pytest.approx(25.0)  # 33 of 132 SMs
        assert all(r["node"] == NODE for r in rows)

        # the answer to a batch was lost: the agent sends the same batch ID again
        batch = ("lost-answer-1", records)
        sink._post(batch)
        before = len(samples(root, want=len(rows) + 3))
        sink._post(batch)  # a 2xx, not an error: the agent must stop re-sending it
        status = client.get("/telemetry/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status.json()["duplicates"] == 1 and status.json()["nodes"] == [NODE]
        time.sleep(1.5)  # the writer's period: a duplicate, had it been queued, is logged now
        assert len(samples(root, want=0, timeout_s=0.5)) == before == 6

        # the state actor dies and comes back from the booking store: still a duplicate
        ray.kill(ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE), no_restart=False)
        wait_ready(client)
        body = {"node": NODE, "batch": "lost-answer-1", "inventory": inventory, "records": records}
        again = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # 503 while the actor restarts
            again = client.post(
                "/telemetry",
                content=json.dumps(body, default=str),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            if again.status_code != 503 and again.status_code != 500:
                break
            time.sleep(0.5)
        assert again is not None and again.status_code == 200, again.text
        assert again.json()["duplicate"] is True
        time.sleep(1.5)
        assert len(samples(root, want=0, timeout_s=0.5)) == 6
    finally:
        sink.close()


def post(client, body, token: str | None = TOKEN):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/telemetry", content=json.dumps(body), headers=headers)


def locs(response) -> list[list]:
    return [d["loc"] for d in response.json()["detail"]]


def test_bad_pushes_are_refused_naming_the_field(served):
    client, _, root = served
    inventory, records = node_batch()
    records = json.loads(json.dumps(records, default=str))
    good = {"node": NODE, "batch": "b-ok", "inventory": inventory, "records": records}

    assert post(client, good, token=None).status_code == 401
    assert post(client, good, token="wrong").status_code == 401

    bad = json.loads(json.dumps(good))
    bad["records"][0]["sm_pct"] = "busy"
    r = post(client, bad)
    assert r.status_code == 422 and ["body", "records", 0, "gpu", "sm_pct"] in locs(r)

    r = post(client, {k: v for k, v in good.items() if k != "batch"})
    assert r.status_code == 422 and ["body", "batch"] in locs(r)

    r = post(client, {**good, "batch": "../../etc"})
    assert r.status_code == 422 and ["body", "batch"] in locs(r)

    r = post(client, {**good, "records": [{**records[0], "node": "other-node"}]})
    assert r.status_code == 422 and "records[0].node" in r.text

    r = post(client, {**good, "extra": 1})
    assert r.status_code == 422 and ["body", "extra"] in locs(r)

    r = post(client, {**good, "records": [records[0]] * 10_001})
    assert r.status_code in (413, 422)

    r = client.post(
        "/telemetry",
        content=b'{"node": "a", "node": "b"}',
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "duplicate key" in r.text

    # none of the refused bodies claimed its batch ID: the corrected batch is taken
    r = post(client, good)
    assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
