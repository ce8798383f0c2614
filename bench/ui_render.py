"""How fast `/ui` renders the 1,213-node openb cluster in headless Chromium (target: every
tile in the page < 2 s after the map page starts loading; the first screenful paints before
that), against a baseline measured in the same browser and run: fetching and parsing
`/ui/state` alone, the floor any view pays.
Also the cost of a refresh that changes a few nodes, and of one that changes nothing.
Writes bench/results/ui_render.json and a screenshot bench/results/ui_openb.png.

    python bench/ui_render.py [--nodes CSV] [--pods CSV] [--book 3000] [--loads 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ (the browser and local-serve helpers)

import httpx  # noqa: E402
from ray import serve  # noqa: E402

from keti_ray.paths import default_nodes_csv, pod_list_csv  # noqa: E402
from keti_ray.trace import load_pods  # noqa: E402
from serve.app import AllocatorIngress  # noqa: E402
from serve.state import ClusterSource  # noqa: E402
from tests.debian_tools import headless_chromium, sign_in, wait_until  # noqa: E402
from tests.factories import local_serve  # noqa: E402

TOKEN = "bench-ui-token"
TARGET_MS = 2000.0
RESULTS = ROOT / "bench" / "results"
TIMELINE = """() => {
  const at = {};
  for (const e of performance.getEntriesByType("resource")) {
    const name = e.name.split("/").pop();
    at[name] = {start_ms: Math.round(e.startTime), end_ms: Math.round(e.responseEnd)};
  }
  at.page = {end_ms: Math.round(performance.getEntriesByType("navigation")[0].responseEnd)};
  return at;
}"""
FETCH_ONLY = """async () => {
  const t0 = performance.now();
  const r = await fetch(document.body.dataset.root + '/ui/state', {cache: 'no-store'});
  const body = await r.json();
  return {ms: performance.now() - t0, nodes: Object.keys(body.nodes).length};
}"""


def pod_body(p) -> dict:
    body = {
        "name": p.name,
        "cpu_milli": p.cpu_milli,
        "memory_mib": p.memory_mib,
        "num_gpu": p.num_gpu,
        "gpu_milli": p.gpu_milli,
    }
    if p.gpu_spec:
        body["gpu_spec"] = "|".join(sorted(p.gpu_spec))
    return body


def book(client: httpx.Client, pods, count: int) -> int:
    """Place up to `count` GPU pods of the trace, in trace order, 500 per batch request."""
    gpu_pods = [p for p in pods if p.num_gpu > 0][:count]
    placed = 0
    for i in range(0, len(gpu_pods), 500):
        r = client.post("/allocate", json={"pods": [pod_body(p) for p in gpu_pods[i : i + 500]]})
        r.raise_for_status()
        placed += r.json()["placed"]
    return placed


def wait_generation(page, after: int) -> dict:
    wait_until(page, f"window.ketiUi.generation > {after}", timeout_s=20)
    return page.evaluate("({...window.ketiUi})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default=str(default_nodes_csv()))
    ap.add_argument("--pods", default=str(pod_list_csv("default")))
    ap.add_argument("--book", type=int, default=3000, help="GPU pods of the trace to place")
    ap.add_argument("--loads", type=int, default=3, help="fresh page loads to time")
    args = ap.parse_args()
    pods = load_pods(args.pods)
    with local_serve() as port:
        source = ClusterSource(nodes_csv=args.nodes, pods_csv=args.pods)
        serve.run(AllocatorIngress.bind(source, TOKEN), name="ui-bench", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=auth, timeout=300) as client:
            placed = book(client, pods, args.book)
            state = client.get("/ui/state")
            nodes = state.json()["nodes"]
            gpus = sum(len(n["gpus"]) for n in nodes.values())
            parts = sum(len(g["partitions"]) for n in nodes.values() for g in n["gpus"])
            print(f"{len(nodes)} nodes, {gpus} GPUs, {placed} pods placed, {parts} partitions")
            loads, baselines, timelines = [], [], []
            with headless_chromium(width=1600, height=1000) as context:
                page = context.new_page()
                sign_in(page, base, TOKEN)  # the session cookie for the loads below
                for _ in range(args.loads):
                    page = context.new_page()
                    page.goto(f"{base}/ui")
                    wait_until(page, "window.ketiUi.generation >= 1", timeout_s=30)
                    loads.append(page.evaluate("({...window.ketiUi})"))
                    timelines.append(page.evaluate(TIMELINE))
                    baselines.append(page.evaluate(FETCH_ONLY)["ms"])
                    page.close()
                page = context.new_page()
                page.goto(f"{base}/ui")
                wait_until(page, "window.ketiUi.generation >= 1", timeout_s=30)
                gen = page.evaluate("window.ketiUi.generation")
                quiet = wait_generation(page, gen)  # a refresh that changes nothing
                more = [p for p in pods if p.num_gpu > 0][args.book : args.book + 40]
                client.post("/allocate", json={"pods": [pod_body(p) for p in more]})
                changed = wait_generation(page, quiet["generation"])
                page.screenshot(path=str(RESULTS / "ui_openb.png"))
    first_paint = statistics.median(x["firstPaintMs"] for x in loads)
    all_tiles = statistics.median(x["allTilesMs"] for x in loads)
    baseline = statistics.median(baselines)
    result = {
        "nodes": len(nodes),
        "gpus": gpus,
        "pods_placed": placed,
        "partitions": parts,
        "state_bytes": len(state.content),
        "loads": args.loads,
        "all_tiles_ms_median": round(all_tiles, 1),
        "all_tiles_ms_each": [round(x["allTilesMs"], 1) for x in loads],
        "first_screen_painted_ms_median": round(first_paint, 1),
        "first_build_wall_ms_median": round(
            statistics.median(x["firstRenderMs"] for x in loads), 1
        ),
        "fetch_ms_median": round(statistics.median(x["lastFetchMs"] for x in loads), 1),
        "first_load_timeline_ms": timelines[len(timelines) // 2],
        "baseline_fetch_parse_ms_median": round(baseline, 1),
        "ratio_all_tiles_to_baseline": round(all_tiles / baseline, 2),
        "refresh_unchanged_render_ms": round(quiet["lastRenderMs"], 1),
        "refresh_changed_render_ms": round(changed["lastRenderMs"], 1),
        "refresh_changed_tiles": changed["changedTiles"],
        "target_all_tiles_ms": TARGET_MS,
        "pass": all_tiles < TARGET_MS,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "browser": "Debian chromium, headless, 1600x1000",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ui_render.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
