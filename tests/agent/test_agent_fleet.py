"""Fleet and NodeAgent on a real 3-node Ray cluster (ray.cluster_utils.Cluster) on this machine.

Each emulated node gets its own plugin directory with a kubelet emulator on it, simulated GPUs
and the MPS control emulator; telemetry goes to a TelemetryCollector actor the test reads.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from keti_ray.agent.fleet import Fleet  # noqa: E402
from keti_ray.agent.mps import MpsDaemon  # noqa: E402
from keti_ray.agent.node_agent import AgentConfig  # noqa: E402
from keti_ray.agent.telemetry import ActorSink, TelemetryCollector  # noqa: E402
from keti_ray.constants import GPU_RESOURCE, RAY_NODE_RESOURCE  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "deviceplugin"))
from kubelet_emulator import KubeletEmulator  # noqa: E402

FAKE_MPS = str(Path(__file__).parent / "fake_mps" / "nvidia-cuda-mps-control")
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # an actor that is restarting answers with an error
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(
        initialize_head=True,
        head_node_args={
            **NODE_ARGS,
            "resources": {RAY_NODE_RESOURCE: 1},
            "include_dashboard": False,
        },
    )
    for _ in range(2):
        c.add_node(**NODE_ARGS, resources={RAY_NODE_RESOURCE: 1})
    c.add_node(**NODE_ARGS)  # a node without the node resource: no agent there
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def fleet_env(cluster):
    root = Path(tempfile.mkdtemp(prefix="kfl", dir="/tmp"))
    collector = ray.remote(TelemetryCollector).options(num_cpus=0).remote()
    config = AgentConfig(
        plugin_dir=str(root / "{node_id}" / "dp"),
        simulate=2,
        mps_binary=FAKE_MPS,
        mps_pipe_dir=str(root / "{node_id}" / "mps"),
        mps_log_dir=str(root / "{node_id}" / "mpslog"),
        status_host_dir=str(root / "{node_id}" / "status"),
        limits_host_dir=str(root / "{node_id}" / "limits"),
        telemetry_interval_s=0.2,
        mps_check_s=0.5,
    )
    fleet = Fleet(config, ActorSink(collector))
    kubelets = {}
    for node_id in fleet.nodes():
        kubelets[node_id] = KubeletEmulator(root / node_id / "dp").start()
    yield fleet, collector, kubelets, root
    fleet.stop()
    for k in kubelets.values():
        k.stop()
    for node_id in kubelets:
        MpsDaemon(root / node_id / "mps", root / node_id / "mpslog", binary=FAKE_MPS).stop()
    ray.kill(collector)
    shutil.rmtree(root, ignore_errors=True)


def test_fleet_one_agent_per_node_restart_and_telemetry(fleet_env):
    fleet, collector, kubelets, root = fleet_env
    nodes = fleet.nodes()
    assert len(nodes) == 3  # the fourth node has no RAY_NODE_RESOURCE
    assert sorted(fleet.start()) == nodes
    assert fleet.reconcile() == []  # idempotent

    info = fleet.info(timeout_s=60)
    assert {n: i["node_id"] for n, i in info.items()} == {n: n for n in nodes}
    assert len({i["pid"] for i in info.values()}) == 3
    for i in info.values():
        assert len(i["gpus"]) == 2 and i["simulated"]
        assert i["mps"]["running"], i["problems"]

    # every agent's GPU plugin registered with its own node's kubelet
    for node_id, k in kubelets.items():
        assert k.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 200, 10), node_id

    # telemetry from every node reaches the collector
    _wait(lambda: set(ray.get(collector.count_by_node.remote())) == set(nodes), 15, "telemetry")

    # an allocation shows in the node's partition table and in its telemetry
    target = nodes[1]
    ids, resp = kubelets[target].admit(GPU_RESOURCE, 30)
    alloc_id = resp.annotations["keti.re.kr/allocation-id"]
    (row,) = ray.get(fleet.agents[target].partition_table.remote())
    assert (row["allocation_id"], row["units"], row["mechanism"]) == (alloc_id, 30, "mps")
    _wait(
        lambda: any(
            r["allocated_units"] == 30 and r["sm_pct"] == 30.0
            for r in ray.get(collector.records.remote("gpu", target))
        ),
        10,
        "telemetry showing the allocation",
    )

    # a GPU failure inside the agent reaches that node's kubelet as Unhealthy units
    assert ray.get(fleet.agents[target].simulate_gpu_failure.remote(0))
    assert kubelets[target].wait_for(lambda k: k.capacity(GPU_RESOURCE) == 100, 2)
    ray.get(fleet.agents[target].simulate_gpu_failure.remote(0, False))

    # kill the agent through Ray: it comes back on the same node and registers again
    agent = fleet.agents[target]
    old_pid = info[target]["pid"]
    regs = len(kubelets[target].registrations)
    ray.kill(agent, no_restart=False)
    new = _wait(
        lambda: (lambda i: i if i["pid"] != old_pid else None)(ray.get(agent.info.remote())),
        60,
        "agent restart after ray.kill",
    )
    assert new["node_id"] == target
    assert kubelets[target].wait_for(lambda k: len(k.registrations) > regs, 10)

    # kill its process outright: back again, same node; telemetry keeps flowing
    before = ray.get(collector.count_by_node.remote())[target]
    os.kill(new["pid"], signal.SIGKILL)
    again = _wait(
        lambda: (lambda i: i if i["pid"] != new["pid"] else None)(ray.get(agent.info.remote())),
        60,
        "agent restart after SIGKILL",
    )
    assert again["node_id"] == target
    _wait(
        lambda: ray.get(collector.count_by_node.remote())[target] > before + 2,
        15,
        "telemetry after restart",
    )
    # the other agents were never disturbed
    others = fleet.info()
    for n in nodes:
        if n != target:
            assert others[n]["pid"] == info[n]["pid"]


def test_agent_cli_starts_a_fleet_and_stops_it(cluster):
    """`keti-ray agent --address ...`: one agent per node-resource node, all gone afterwards."""
    import json
    import subprocess

    root = Path(tempfile.mkdtemp(prefix="kcl", dir="/tmp"))
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parents[2]}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from keti_ray.cli import app, plugin_cmd; app()",
             "agent", "--address", cluster.address, "--simulate", "1", "--no-mps",
             "--plugin-dir", str(root / "{node_id}"), "--status-dir", str(root / "st"),
             "--limits-dir", str(root / "lim"),
             "--run-for", "1"],
            env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert len(out["started_on"]) == 3
        assert {a["node_id"] for a in out["agents"].values()} == set(out["started_on"])
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        assert not any(n.startswith("keti-node-agent-") for n in names)
    finally:
        shutil.rmtree(root, ignore_errors=True)
