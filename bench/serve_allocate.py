"""Throughput and latency of POST /allocate against a no-op Serve endpoint on the same Ray,
with the same client (16 connections): dry runs AND bookings (each booking committed to the
SQLite booking store before its 200), plus the batch form and the policy called in-process.
Each Serve configuration (default, RAY_SERVE_THROUGHPUT_OPTIMIZED=1) runs on its own Ray.
Targets: bookings and dry runs >= 80% of the no-op's requests/s measured around them;
>= 2,000 decisions/s via the batch form. Writes bench/results/serve_allocate.json.

    python bench/serve_allocate.py [--requests 1500] [--connections 16] [--policies fgd,ppo]
        [--configs default,throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
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
    codes: dict[int, int] = {}
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
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code not in (200, 409):  # 409: that pod fits nowhere now
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(bodies),
        "errors": errors,
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "requests_per_s": round(len(bodies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


CONFIGS = {
    "default": {},
    # Serve 2.60's documented bundle: gRPC data plane between proxy and replicas, direct
    # ingress, user code on the replica's event loop, buffered request logs, GC frozen.
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--policies", default="fgd,ppo")
    parser.add_argument("--configs", default="default,throughput")
    parser.add_argument(
        "--replicas", type=int, default=2, help="allocator replicas (as serve_config.yaml)"
    )
    parser.add_argument("--config", help=argparse.SUPPRESS)  # one configuration, in a child
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "serve_allocate.json")
    )
    args = parser.parse_args()
    if args.config:
        print(json.dumps(run_config(args)), flush=True)
        return
    results: dict = {
        "cluster": "openb 1,213 GPU nodes",
        "connections": args.connections,
        "requests_per_load": args.requests,
        "allocator_replicas": args.replicas,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "configs": {},
    }
    for name in args.configs.split(","):
        env = {**os.environ, **CONFIGS[name]}
        argv = [sys.executable, __file__, "--config", name, *_forward(args)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"config {name} failed:\n{proc.stderr[-3000:]}")
        results["configs"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results["configs"][name]), flush=True)
    best = {
        policy: max(
            (c[policy]["booking_over_noop"], c[policy]["dry_run_over_noop"], name)
            for name, c in results["configs"].items()
            if policy in c
        )
        for policy in args.policies.split(",")
    }
    results["targets"] = {
        "over_noop_min": 0.8,
        "batch_decisions_per_s_min": 2000,
        "best_config": {p: b[2] for p, b in best.items()},
        "bookings_meet": {p: b[0] >= 0.8 for p, b in best.items()},
        "dry_runs_meet": {p: b[1] >= 0.8 for p, b in best.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["targets"]))


def _forward(args) -> list[str]:
    return [
        "--requests",
        str(args.requests),
        "--connections",
        str(args.connections),
        "--batch",
        str(args.batch),
        "--policies",
        args.policies,
        "--replicas",
        str(args.replicas),
    ]


def run_config(args) -> dict:
    """One Serve configuration (its env set by the parent before Ray starts)."""
    nodes_csv, pods_csv = default_nodes_csv(), pod_list_csv("default")
    pods = load_pods(pods_csv)
    rng = np.random.default_rng(0)
    sample = [pods[i] for i in rng.integers(len(pods), size=args.requests)]

    def body(p: PodRequest, i: int, prefix: str, dry_run: bool) -> dict:
        pod = {
            "name": f"{prefix}{i}",
            "cpu_milli": p.cpu_milli,
            "memory_mib": p.memory_mib,
            "num_gpu": p.num_gpu,
            "gpu_milli": p.gpu_milli,
        }
        return {"pod": pod, "dry_run": dry_run}

    dry = [body(p, i, "d", True) for i, p in enumerate(sample)]
    out: dict = {"env": CONFIGS[args.config]}
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    ray.init(address="local", include_dashboard=False, namespace=RAY_NAMESPACE, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            NoOp.options(num_replicas=args.replicas).bind(), name="noop", route_prefix="/noop"
        )
        allocator = AllocatorIngress.options(num_replicas=args.replicas)
        base = f"http://127.0.0.1:{port}"
        for policy in args.policies.split(","):
            # A fresh booking store per policy: every booking run starts on an empty cluster.
            _drop_state_actor()
            source = ClusterSource(
                nodes_csv=str(nodes_csv),
                pods_csv=str(pods_csv),
                state=str(workdir / f"{policy}.db"),
            )
            serve.run(
                allocator.options(user_config={"policy": policy}).bind(source),
                name="alloc",
                route_prefix="/",
            )
            warm = [body(p, i, "w", True) for i, p in enumerate(sample[:100])]
            asyncio.run(load(f"{base}/noop/allocate", warm, args.connections))
            asyncio.run(load(f"{base}/allocate", warm, args.connections))
            noop_before = asyncio.run(load(f"{base}/noop/allocate", dry, args.connections))
            dry_run = asyncio.run(load(f"{base}/allocate", dry, args.connections))
            booking_bodies = [body(p, i, "b", False) for i, p in enumerate(sample)]
            booking = asyncio.run(load(f"{base}/allocate", booking_bodies, args.connections))
            noop_after = asyncio.run(load(f"{base}/noop/allocate", dry, args.connections))
            noop_rate = (noop_before["requests_per_s"] + noop_after["requests_per_s"]) / 2
            with httpx.Client(timeout=60) as client:
                booked = len(client.get(f"{base}/bookings").json())
            batches = [
                {"pods": [b["pod"] for b in dry[i : i + args.batch]], "dry_run": True}
                for i in range(0, len(dry), args.batch)
            ] * 3
            start = time.perf_counter()
            with httpx.Client(timeout=120) as client:
                for b in batches:
                    assert client.post(f"{base}/allocate", json=b).status_code == 200
            batch_rate = sum(len(b["pods"]) for b in batches) / (time.perf_counter() - start)
            out[policy] = {
                "noop_before": noop_before,
                "dry_run": dry_run,
                "booking": booking,
                "noop_after": noop_after,
                "bookings_in_store": booked,
                "dry_run_over_noop": round(dry_run["requests_per_s"] / noop_rate, 3),
                "booking_over_noop": round(booking["requests_per_s"] / noop_rate, 3),
                "batch_decisions_per_s": round(batch_rate, 1),
                "in_process_decisions_per_s": in_process_rate(nodes_csv, pods, sample, policy),
            }
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def _drop_state_actor() -> None:
    from serve.state import STATE_ACTOR_NAME

    try:
        ray.kill(ray.get_actor(STATE_ACTOR_NAME, namespace=RAY_NAMESPACE), no_restart=True)
    except ValueError:
        pass


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
