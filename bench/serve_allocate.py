"""Throughput and latency of POST /allocate against a no-op Serve endpoint on the same Ray,
with the same client (16 connections), plus the batch form and the policy called in-process.
Targets: /allocate >= 80% of the no-op's requests/s; >= 2,000 decisions/s via the batch form.
Writes bench/results/serve_allocate.json.

    python bench/serve_allocate.py [--requests 1500] [--connections 16] [--policies fgd]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import ray
from fastapi import FastAPI
from ray import serve

from keti_ray.cluster import ClusterState, PodRequest
from keti_ray.evaluate import make_policy
from keti_ray.fragmentation import TypicalPods
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.trace import load_nodes, load_pods
from serve.app import AllocatorIngress
from serve.state import RAY_NAMESPACE, ClusterSource

noop_api = FastAPI()


@serve.deployment(name="NoOp", max_ongoing_requests=128, ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class NoOp:
    """Same framework path as the allocator (Serve + FastAPI + JSON body), no work."""

    @noop_api.post("/allocate")
    async def allocate(self, body: dict) -> dict:
        return {"ok": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[dict], connections: int) -> dict:
    """Send every body once with `connections` concurrent clients; latency per request."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                body = queue.get_nowait()
                start = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(bodies),
        "errors": errors,
        "requests_per_s": round(len(bodies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--policies", default="fgd")
    parser.add_argument(
        "--replicas", type=int, default=2, help="allocator replicas (as serve_config.yaml)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "serve_allocate.json")
    )
    args = parser.parse_args()

    nodes_csv, pods_csv = default_nodes_csv(), pod_list_csv("default")
    pods = load_pods(pods_csv)
    rng = np.random.default_rng(0)
    sample = [pods[i] for i in rng.integers(len(pods), size=args.requests)]

    def body(p: PodRequest, i: int) -> dict:
        return {
            "pod": {
                "name": f"b{i}",
                "cpu_milli": p.cpu_milli,
                "memory_mib": p.memory_mib,
                "num_gpu": p.num_gpu,
                "gpu_milli": p.gpu_milli,
            },
            "dry_run": True,
        }

    bodies = [body(p, i) for i, p in enumerate(sample)]
    results: dict = {
        "cluster": "openb 1,213 GPU nodes",
        "connections": args.connections,
        "allocator_replicas": args.replicas,
        "load_average_1m_at_start": os.getloadavg()[0],
    }

    port = free_port()
    ray.init(address="local", include_dashboard=False, namespace=RAY_NAMESPACE, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(NoOp.bind(), name="noop", route_prefix="/noop")
        source = ClusterSource(nodes_csv=str(nodes_csv), pods_csv=str(pods_csv))
        allocator = AllocatorIngress.options(num_replicas=args.replicas)
        serve.run(allocator.bind(source), name="alloc", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        warm = bodies[:50]
        asyncio.run(load(f"{base}/noop/allocate", warm, args.connections))
        asyncio.run(load(f"{base}/allocate", warm, args.connections))
        for policy in args.policies.split(","):
            serve.run(
                allocator.options(user_config={"policy": policy}).bind(source),
                name="alloc",
                route_prefix="/",
            )
            noop = asyncio.run(load(f"{base}/noop/allocate", bodies, args.connections))
            alloc = asyncio.run(load(f"{base}/allocate", bodies, args.connections))
            batches = [
                {"pods": [b["pod"] for b in bodies[i : i + args.batch]], "dry_run": True}
                for i in range(0, len(bodies), args.batch)
            ] * 3
            start = time.perf_counter()
            with httpx.Client(timeout=120) as client:
                for b in batches:
                    assert client.post(f"{base}/allocate", json=b).status_code == 200
            batch_rate = sum(len(b["pods"]) for b in batches) / (time.perf_counter() - start)
            results[policy] = {
                "noop": noop,
                "allocate": alloc,
                "allocate_over_noop": round(alloc["requests_per_s"] / noop["requests_per_s"], 3),
                "batch_decisions_per_s": round(batch_rate, 1),
                "in_process_decisions_per_s": in_process_rate(nodes_csv, pods, sample, policy),
            }
            print(policy, json.dumps(results[policy]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    fgd = results.get("fgd", {})
    results["targets"] = {
        "allocate_over_noop_min": 0.8,
        "batch_decisions_per_s_min": 2000,
        "fgd_meets": bool(fgd)
        and fgd["allocate_over_noop"] >= 0.8
        and fgd["batch_decisions_per_s"] >= 2000,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["targets"]))


def in_process_rate(nodes_csv, pods, sample, policy: str) -> dict:
    """Decisions/s of the same policy without Serve (dry: nothing booked), with its score
    caches cold (first pass) and warm (second pass, as in the long-running state actor)."""
    state = ClusterState(load_nodes(nodes_csv))
    allocator = make_policy(policy, TypicalPods.from_pods(pods), 0)
    rates = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        for p in sample:
            allocator.place(state, p)
        rates[label] = round(len(sample) / (time.perf_counter() - start), 1)
    return rates


if __name__ == "__main__":
    main()
