"""The operator's view `/ui` against a served allocator on a real local Ray: the token gate
(session cookie set by a POST that carries the Authorization header), the JSON it polls, and
the acceptance test in headless Chromium (tiles match /partition, the refresh shows a new
booking, screenshot in bench/results/ui.png)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from ray import serve

from keti_ray.rl.policy import SHIPPED_CHECKPOINT_SHA256
from serve.app import AllocatorIngress
from serve.state import ClusterSource
from serve.ui.auth import SESSION_COOKIE, SESSION_TTL_S, session_value
from tests.debian_tools import ToolUnavailable, headless_chromium, sign_in, wait_until

TOKEN = "ui-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCREENSHOT = Path(__file__).parents[2] / "bench" / "results" / "ui.png"
SHARES = [250, 470, 100, 800, 300, 600, 150, 500, 250, 330, 50, 700, 200, 1000]


def pod(name: str, milli: int, num: int = 1) -> dict:
    return {"name": name, "cpu_milli": 500, "memory_mib": 512, "num_gpu": num, "gpu_milli": milli}


@pytest.fixture(scope="module")
def served(serve_session):
    """The package's Ray + Serve: 6 simulated nodes behind a token, with bookings."""
    port = serve_session.port
    try:
        source = ClusterSource(sim_nodes=6)
        prefixed = AllocatorIngress.options(name="Prefixed").bind(source, TOKEN)
        serve.run_many(  # both deployed at once; /ops: the same state under a route prefix
            [
                serve.RunTarget(AllocatorIngress.bind(source, TOKEN), name="ui", route_prefix="/"),
                serve.RunTarget(prefixed, name="ops", route_prefix="/ops"),
            ]
        )
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as client:
            pods = [pod(f"job-{i:02d}", m) for i, m in enumerate(SHARES)] + [pod("train", 1000, 2)]
            r = client.post("/allocate", json={"pods": pods})
            assert r.status_code == 200 and r.json()["placed"] == len(pods), r.text
            keys = {p["name"]: x["pod"] for p, x in zip(pods, r.json()["results"], strict=True)}
            r = client.post("/allocate", json={"pod": {**pod("hog", 0, 0), "cpu_milli": 10**8}})
            assert r.status_code == 409  # no node has 100 cores
            yield client, base, keys
    finally:
        serve_session.clean()


def partition_view(nodes: dict) -> dict:
    """node -> [(gpu index, free milli, [(pod, milli), ...])], the part the tiles show."""
    return {
        name: [
            (g["index"], g["free_milli"], [(p["pod"], p["milli"]) for p in g["partitions"]])
            for g in n["gpus"]
        ]
        for name, n in nodes.items()
    }


def test_ui_is_behind_the_token(served):
    client, base, _ = served
    anon = httpx.Client(base_url=base, timeout=30)
    r = anon.get("/ui")
    assert r.status_code == 401 and 'id="token"' in r.text and "app.js" not in r.text
    assert 'name="token"' not in r.text  # the form itself never submits the token
    assert anon.get("/ui/state").status_code == 401
    assert anon.get("/ui/static/app.js").status_code == 401
    wrong = anon.post("/ui/session", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
    latin = anon.post("/ui/session", headers={"Authorization": "Bearer caf\xe9".encode("latin-1")})
    assert latin.status_code == 401  # a non-ASCII header: refused, never a 500
    ok = anon.post("/ui/session", headers=AUTH)
    assert ok.status_code == 204
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert TOKEN not in ok.headers["set-cookie"]
    page = anon.get("/ui")
    assert page.status_code == 200 and "app.js" in page.text
    assert "script-src 'self';" in page.headers["content-security-policy"]  # no inline script
    assert anon.get("/ui/state").status_code == 200
    assert anon.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert anon.get("/partition").status_code == 401  # the cookie opens /ui only
    expires, _, sig = anon.cookies[SESSION_COOKIE].partition(".")
    forged = {SESSION_COOKIE: f"{int(expires) + 3600}.{sig}"}
    assert httpx.get(f"{base}/ui/state", cookies=forged).status_code == 401
    stale = {SESSION_COOKIE: session_value(TOKEN, now=time.time() - 2 * SESSION_TTL_S)}
    assert httpx.get(f"{base}/ui/state", cookies=stale).status_code == 401
    assert client.get("/ui/state").status_code == 200  # the header works as well
    anon.delete("/ui/session")
    assert anon.get("/ui/state").status_code == 401
    anon.close()


def test_ui_under_a_route_prefix(served):
    _, base, _ = served
    with httpx.Client(base_url=base, timeout=30) as anon:
        signin = anon.get("/ops/ui")
        assert signin.status_code == 401 and 'data-root="/ops"' in signin.text
        ok = anon.post("/ops/ui/session", headers=AUTH)
        assert ok.status_code == 204 and "path=/ops/ui" in ok.headers["set-cookie"].lower()
        page = anon.get("/ops/ui")
        assert page.status_code == 200 and 'src="/ops/ui/static/app.js"' in page.text
        assert anon.get("/ops/ui/static/app.js").status_code == 200
        assert anon.get("/ops/ui/state").json()["summary"]["nodes"] == 6


def test_state_is_partition_plus_a_summary_from_the_service(served):
    client, _, _ = served
    state = client.get("/ui/state").json()
    nodes = client.get("/partition").json()["nodes"]
    assert state["nodes"] == nodes
    health = client.get("/health").json()
    summary = state["summary"]
    assert summary["policy"] == health["policy"] == "ppo@" + SHIPPED_CHECKPOINT_SHA256[:12]
    assert summary["nodes"] == 6 and summary["gpus"] == health["gpus"]
    assert summary["decisions"]["placed"] >= len(SHARES) + 1
    assert summary["refused"] >= 1  # the hog found no node
    assert summary["missing_metrics"] == []  # CONTRACTS §5 names, all exported
    gpus = [g for n in nodes.values() for g in n["gpus"]]
    free_pct = 100 * sum(g["free_milli"] for g in gpus) / (1000 * len(gpus))
    assert summary["unallocated_gpu_pct"] == pytest.approx(free_pct, abs=0.01)
    booked = {p["pod"] for g in gpus for p in g["partitions"]}
    assert summary["pods_placed"] == len(booked)
    assert 0 <= summary["fragmentation_pct"] <= 100
    latency = summary["latency"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] < 1000


def dom_view(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#grid .tile')].map(t => [
            t.dataset.node,
            [...t.querySelectorAll('.gpu')].map(g => [Number(g.dataset.gpu),
                Number(g.dataset.free),
                [...g.querySelectorAll('.seg')].map(s => [s.dataset.pod, Number(s.dataset.milli)])])
        ]))"""
    )


def as_lists(view: dict) -> dict:
    return {k: [[i, f, [list(p) for p in parts]] for i, f, parts in v] for k, v in view.items()}


def test_browser_shows_the_partition_map(served):
    client, base, keys = served
    try:
        browser = headless_chromium()
        context = browser.__enter__()
    except ToolUnavailable as exc:
        pytest.skip(f"headless Chromium cannot run here: {exc}")
    try:
        page = context.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        sign_in(page, base, TOKEN)
        wait_until(page, "window.ketiUi.generation >= 2")  # a refresh
        expected = as_lists(partition_view(client.get("/partition").json()["nodes"]))
        assert dom_view(page) == expected
        summary = client.get("/ui/state").json()["summary"]
        assert page.text_content("#h-refused") == str(summary["refused"])
        assert page.text_content("#policy") == "policy ppo@" + SHIPPED_CHECKPOINT_SHA256[:12]

        # a new booking shows up by itself within a refresh or two
        r = client.post("/allocate", json={"pod": pod("late-arrival", 400)})
        assert r.status_code == 200
        late = r.json()["pod"]  # the pod's key, as /partition names it
        page.wait_for_selector(f'.seg[data-pod="{late}"]', timeout=10_000)
        assert dom_view(page) == as_lists(partition_view(client.get("/partition").json()["nodes"]))

        page.fill("#filter", "late-arrival")
        assert page.evaluate("document.querySelectorAll('#grid .tile:not(.hidden)').length") == 1
        page.fill("#filter", "")
        seg = page.locator(f'.seg[data-pod="{keys["job-01"]}"]')
        seg.hover()
        tip = page.text_content("#tip")
        assert "job-01" in tip and "470" in tip and "47%" in tip
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        seg.click()
        assert "job-01" in page.text_content("#details")
        assert errors == []
        assert all(u.startswith(base) or u.startswith("data:") for u in requests), requests
    finally:
        browser.__exit__(None, None, None)
        client.post("/release", json={"pod": "late-arrival"})  # by name (default namespace)
