"""Issue 7 end to end on a local Ray: the served allocator with simulated nodes, a workload
whose mix shifts, telemetry accumulating, `retrain` producing candidates, promotion only
when better (both outcomes), and the new policy served with no failed request."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from ray import serve

from keti_ray.loadgen import Phase, run_load
from keti_ray.promotion import read_pointer, write_pointer
from keti_ray.retrain import RetrainSettings, retrain
from keti_ray.simcluster import simulated_nodes
from keti_ray.telemetry import TelemetryStore
from serve.app import AllocatorIngress
from serve.state import ClusterSource

from ..factories import local_serve

pytestmark = pytest.mark.slow
SIM_NODES = 4


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    pointer = root / "serving.json"
    write_pointer(pointer, None, None, policy="fgd")
    with local_serve() as port:
        source = ClusterSource(
            sim_nodes=SIM_NODES,
            journal=str(root / "journal.jsonl"),
            telemetry_dir=str(root / "telemetry"),
        )
        app = AllocatorIngress.options(user_config={"pointer": str(pointer)}).bind(source)
        serve.run(app, name="alloc", route_prefix="/")
        yield f"http://127.0.0.1:{port}", root, pointer


class TrainOnce:
    """retrain's `train_fn`: trains for real (keti_ray.rl.retrain.train_candidate), and answers a
    later call with the very same inputs (workload file content, nodes, iterations, warm start,
    seed, config) with a copy of that candidate instead of training it again: training is
    deterministic for a seed (tests/rl/test_train.py), so the copy is what it would train. Any
    other call trains."""

    def __init__(self) -> None:
        self.trained: dict[str, tuple[Path, dict]] = {}
        self.reused = 0

    def __call__(self, *, config, workload_csv, nodes, iterations, out_dir, init_from, seed):
        from keti_ray.rl.retrain import train_candidate

        workload = hashlib.sha256(Path(workload_csv).read_bytes()).hexdigest()
        key = repr((workload, list(nodes), iterations, init_from, seed, config))
        if key in self.trained:
            first_dir, result = self.trained[key]
            for entry in first_dir.iterdir():  # what train_candidate wrote (not retrain's report)
                if entry.name == "report.json":
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, Path(out_dir) / entry.name)
                else:
                    shutil.copy2(entry, Path(out_dir) / entry.name)
            self.reused += 1
            rel = Path(result["checkpoint"]).relative_to(first_dir)
            return {**result, "checkpoint": str(Path(out_dir) / rel)}
        result = train_candidate(
            config=config,
            workload_csv=workload_csv,
            nodes=nodes,
            iterations=iterations,
            out_dir=out_dir,
            init_from=init_from,
            seed=seed,
        )
        self.trained[key] = (Path(out_dir), result)
        return result


@pytest.fixture(scope="module")
def train_once() -> TrainOnce:
    return TrainOnce()


def wait_for_policy(url: str, predicate, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    policy = ""
    while time.time() < deadline:
        policy = httpx.get(f"{url}/health", timeout=10).json()["policy"]
        if predicate(policy):
            return policy
        time.sleep(0.5)
    return policy


def settings(root, pointer, name: str) -> RetrainSettings:
    return RetrainSettings(
        telemetry=root / "telemetry",
        out=root / name,
        nodes=simulated_nodes(SIM_NODES),
        serving=str(pointer),
        pointer=pointer,
        iterations=1,
        workload_pods=1500,
        eval_seeds=tuple(range(9001, 9011)),  # the paired test needs >= 10 held-out seeds
        min_improvement=0.05,
        seed=0,
    )


def test_shifting_mix_feeds_telemetry(loop):
    url, root, _ = loop
    result = run_load(url, [Phase("whole", 60), Phase("mixed", 240)], seed=1, lifetime=25)
    assert result.failed == 0 and result.placed > 200
    store = TelemetryStore(root / "telemetry", writer="test-reader")
    deadline = time.time() + 30
    while time.time() < deadline:  # the state actor pushes and flushes every 2 s
        allocs = [e for e in store.read("events").to_pylist() if e["op"] == "allocate"]
        if len(allocs) >= result.placed:
            break
        time.sleep(0.5)
    assert len(allocs) == result.placed
    late = {e["gpu_milli"] for e in allocs[-100:]}
    assert late & {250, 470}, "the mix shifted to shares"


def test_candidate_no_better_than_fgd_is_not_promoted(loop, train_once):
    url, root, pointer = loop
    before = pointer.read_text()
    outcome = retrain(settings(root, pointer, "retrain-vs-fgd"), train_fn=train_once)
    assert outcome.serving_policy == "fgd"
    assert not outcome.promoted
    assert not outcome.test["promote"]
    assert pointer.read_text() == before
    assert outcome.report.parent.name.startswith("candidate-")
    assert (outcome.report.parent / "checkpoint").is_dir()
    assert httpx.get(f"{url}/health", timeout=10).json()["policy"] == "fgd"


def test_better_candidate_is_promoted_and_served_without_failures(loop, train_once):
    url, root, pointer = loop
    write_pointer(pointer, None, None, policy="random")  # a weak serving policy
    assert wait_for_policy(url, lambda p: p == "random") == "random"
    failures, done = [], threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            i = 0
            while not done.is_set():
                body = {
                    "pod": {
                        "name": f"h{i}",
                        "cpu_milli": 1000,
                        "memory_mib": 1024,
                        "num_gpu": 1,
                        "gpu_milli": 250,
                    },
                    "dry_run": True,
                }
                status = client.post("/allocate", json=body).status_code
                if status not in (200, 409):
                    failures.append(status)
                i += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        outcome = retrain(settings(root, pointer, "retrain-vs-random"), train_fn=train_once)
        assert outcome.serving_policy == "random"
        assert outcome.promoted, (outcome.candidate_pct, outcome.serving_pct)
        record = read_pointer(pointer)
        assert record["policy"] == "ppo" and len(record["sha256"]) == 64
        policy = wait_for_policy(url, lambda p: p.startswith("ppo@"))
    finally:
        done.set()
        worker.join()
    assert policy == f"ppo@{record['sha256'][:12]}"
    assert failures == []
    print(f"candidates trained: {len(train_once.trained)}, reused: {train_once.reused}")
