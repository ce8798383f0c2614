"""Allocate and GetPreferredAllocation latency through the real Unix socket.

A GPU plugin over 8 simulated GPUs (FGD chooser), in its own process as on a node (`keti-ray
plugin gpu --simulate 8`; `--in-process` runs it inside the benchmark instead), registers
with the kubelet emulator; 1,000
pod admissions (GetPreferredAllocation, then Allocate with its answer) of mixed sizes run
against a node kept partly full (the oldest pods are released as new ones arrive), timed at
the client as kubelet would see them.  Target: p99 < 5 ms for both calls.

Two modes, measured in the same run:
- `local`: no API server; the plugin's own FGD chooses every GPU (the fallback path, counted);
- `decided`: the plugin asks the API-server emulator (tests/k8s) for the pod being admitted
  and follows its `keti.re.kr/allocation` annotation (the benchmark plays the extender:
  first fit, annotation, pods/binding), as on a cluster; a released pod is deleted.
The JSON reports each mode and the ratio decided / local of the p99s.

    python bench/plugin_latency.py [--calls 1000] [--gpus 8] [--in-process] [--mode both]
writes bench/results/plugin_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "deviceplugin"))
sys.path.insert(0, str(ROOT / "tests" / "k8s"))

from apiserver_emulator import ApiServerEmulator  # noqa: E402
from kubelet_emulator import KubeletEmulator  # noqa: E402

from keti_ray.annotations import Allocation, ContainerAllocation, encode_allocation  # noqa: E402
from keti_ray.constants import ANN_ALLOCATION, GPU_RESOURCE  # noqa: E402
from keti_ray.deviceplugin._gen import api_pb2 as pb  # noqa: E402
from keti_ray.deviceplugin.decisions import ApiServerPods, watched_finder  # noqa: E402
from keti_ray.deviceplugin.gpu import GpuPlugin  # noqa: E402
from keti_ray.deviceplugin.nvml import SimulatedBackend  # noqa: E402
from keti_ray.deviceplugin.units import parse_device_id  # noqa: E402

NODE = "bench-node"
TARGET_P99_MS = 5.0
SIZES = (5, 10, 20, 25, 30, 50, 75, 100, 200)


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(ms),
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(ms[-1], 3),
    }


def _start_plugin(tmp: Path, gpus: int, in_process: bool, apiserver: str | None):
    """The plugin under test: a GpuPlugin here, or `keti-ray plugin gpu` as a process."""
    if in_process:
        decisions = None
        if apiserver:
            pods = ApiServerPods.from_environment(NODE, host=apiserver)
            decisions, _watcher = watched_finder(NODE, pods)
        plugin = GpuPlugin(
            SimulatedBackend(gpus, seed=NODE), tmp, status_host_dir=str(tmp / "st"),
            limits_host_dir=str(tmp / "lim"), decisions=decisions,
        )  # fmt: skip
        if decisions is not None:
            decisions.held = plugin._held_containers
        plugin.start()
        return plugin.chooser_name, plugin.stop
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "NODE_NAME": NODE,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from keti_ray.cli import app, plugin_cmd; app(prog_name='keti-ray')",
            *("plugin", "gpu", "--simulate", str(gpus), "--plugin-dir", str(tmp)),
            *("--status-dir", str(tmp / "st"), "--limits-dir", str(tmp / "lim")),
            *("--apiserver", apiserver or "none", "--log-level", "error"),
            *("--metrics-port", "0"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = json.loads(proc.stdout.readline() or "{}")
    port = first.get("metrics_port")

    def counters() -> dict[str, float]:
        """The plugin's decision counters, from its /metrics."""
        import urllib.request

        if not port:
            return {}
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        out = {}
        for line in text.decode().splitlines():
            if line.startswith("keti_plugin_") and "_total" in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stop.counters = counters
    return first.get("chooser", "?"), stop


class Extender:
    """The benchmark's stand-in for the extender's bind: first fit, annotation, binding."""

    def __init__(self, url: str, gpu_uuids: list[str]) -> None:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = url
        self.api = client.CoreV1Api(client.ApiClient(cfg))
        self.free = {u: 100 for u in gpu_uuids}
        self.n = 0

    def bind(self, size: int) -> tuple[str, list[str]] | None:
        if size < 100:
            gpus = [next((u for u, f in self.free.items() if f >= size), None)]
            if gpus[0] is None:
                return None
            share = ContainerAllocation(
                gpus=tuple(gpus), milli=size * 10, sm_pct=size, mechanism="mps"
            )
        else:
            gpus = [u for u, f in self.free.items() if f == 100][: size // 100]
            if len(gpus) < size // 100:
                return None
            share = ContainerAllocation(
                gpus=tuple(gpus), milli=1000, sm_pct=100, mechanism="exclusive"
            )
        self.n += 1
        name = f"pod-{self.n}"
        ann = encode_allocation(Allocation(node=NODE, policy="bench", containers={"main": share}))
        self.api.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": name, "annotations": {ANN_ALLOCATION: ann}},
                "spec": {"containers": [{"name": "main", "image": "x",
                                         "resources": {"limits": {GPU_RESOURCE: str(size)}}}]},
            },
        )  # fmt: skip
        self.api.create_namespaced_pod_binding(
            name, "default", {"metadata": {"name": name}, "target": {"kind": "Node", "name": NODE}},
            _preload_content=False,
        )  # fmt: skip
        for u in gpus:
            self.free[u] -= min(size, 100)
        return name, gpus

    def release(self, name: str, ids: list[str]) -> None:
        self.api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        for i in ids:
            self.free[parse_device_id(i)[0]] += 1


def run(
    calls: int, gpus: int, in_process: bool = False, seed: int = 0, mode: str = "local"
) -> dict:
    rng = random.Random(seed)
    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="kbench", dir="/tmp"))
    kubelet = KubeletEmulator(tmp).start()
    api_emu = ApiServerEmulator().start() if mode == "decided" else None
    chooser, stop_plugin = _start_plugin(tmp, gpus, in_process, api_emu.url if api_emu else None)
    try:
        if not kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 100 * gpus, 10):
            raise RuntimeError("plugin did not register with the kubelet emulator")
        stub = kubelet.endpoints[GPU_RESOURCE].stub
        taken: set[str] = set()
        live: deque[tuple[str | None, list[str]]] = deque()
        all_ids = kubelet.healthy_ids(GPU_RESOURCE)
        uuids = sorted({parse_device_id(i)[0] for i in all_ids})
        extender = Extender(api_emu.url, uuids) if api_emu else None

        def release_oldest() -> None:
            name, ids = live.popleft()
            taken.difference_update(ids)
            if extender is not None and name is not None:
                extender.release(name, ids)

        pref_t: list[float] = []
        alloc_t: list[float] = []
        for _ in range(20):  # warm up the channel and the FGD caches
            stub.GetDevicePluginOptions(pb.Empty())
        while len(alloc_t) < calls:
            size = rng.choice(SIZES)
            name = None
            if extender is not None:
                bound = extender.bind(size)
                if bound is None:  # no room for this size: free the oldest pod, try again
                    release_oldest()
                    continue
                name = bound[0]
            available = [i for i in all_ids if i not in taken]
            req = pb.PreferredAllocationRequest(
                container_requests=[
                    pb.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available, allocation_size=size
                    )
                ]
            )
            t0 = time.perf_counter()
            try:
                resp = stub.GetPreferredAllocation(req, timeout=10)
            except Exception:  # no room for this size: free the oldest pod and try again
                pref_t.append(time.perf_counter() - t0)
                if extender is not None:
                    raise  # the extender found room: the plugin must follow it
                if live:
                    release_oldest()
                continue
            pref_t.append(time.perf_counter() - t0)
            ids = list(resp.container_responses[0].deviceIDs)
            areq = pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]
            )
            t0 = time.perf_counter()
            stub.Allocate(areq, timeout=10)
            alloc_t.append(time.perf_counter() - t0)
            if extender is not None:  # the plugin followed the decision
                assert {parse_device_id(i)[0] for i in ids} == set(bound[1]), (ids, bound)
            taken.update(ids)
            live.append((name, ids))
            while len(taken) > 70 * gpus and live:  # keep the node 30-70 % full
                release_oldest()
        pref, alloc = _stats(pref_t), _stats(alloc_t)
        counters = getattr(stop_plugin, "counters", dict)()
        return {
            "benchmark": "plugin_latency",
            "mode": mode,
            "transport": "gRPC over a Unix socket, client = kubelet emulator's stub",
            "gpus": gpus,
            "units": 100 * gpus,
            "chooser": chooser,
            "plugin_process": "in-process"
            if in_process
            else "separate process (keti-ray plugin gpu)",
            "request_sizes": list(SIZES),
            "plugin_counters": counters,
            "get_preferred_allocation": pref,
            "allocate": alloc,
            "target_p99_ms": TARGET_P99_MS,
            "pass": pref["p99_ms"] < TARGET_P99_MS and alloc["p99_ms"] < TARGET_P99_MS,
            "host": {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_avg_1m_at_start": round(load_start, 2),
                "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            },
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        stop_plugin()
        kubelet.stop()
        if api_emu is not None:
            api_emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--in-process", action="store_true", help="plugin inside this process")
    ap.add_argument("--mode", choices=("local", "decided", "both"), default="both")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plugin_latency.json")
    args = ap.parse_args()
    modes = ("local", "decided") if args.mode == "both" else (args.mode,)
    runs = {m: run(args.calls, args.gpus, args.in_process, mode=m) for m in modes}
    result = {
        "benchmark": "plugin_latency",
        "target_p99_ms": TARGET_P99_MS,
        "pass": all(r["pass"] for r in runs.values()),
        "runs": runs,
    }
    if len(runs) == 2:
        result["p99_ratio_decided_over_local"] = {
            call: round(runs["decided"][call]["p99_ms"] / runs["local"][call]["p99_ms"], 3)
            for call in ("get_preferred_allocation", "allocate")
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for m, r in runs.items():
        for call in ("get_preferred_allocation", "allocate"):
            s = r[call]
            line = f"{m:8s} {call:26s} n={s['n']:5d}  p50 {s['p50_ms']:.3f} ms"
            print(f"{line}  p99 {s['p99_ms']:.3f} ms")
    if "p99_ratio_decided_over_local" in result:
        print(f"p99 decided/local: {result['p99_ratio_decided_over_local']}")
    print(f"target p99 < {TARGET_P99_MS} ms: {'PASS' if result['pass'] else 'FAIL'} -> {args.out}")


if __name__ == "__main__":
    main()
