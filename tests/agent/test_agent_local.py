"""NodeAgent in-process (no Ray): partition table from Allocate + shim status lines, telemetry."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from keti_ray.agent.node_agent import AgentConfig, NodeAgent
from keti_ray.agent.telemetry import ListSink, parse_status_line, read_status_dir
from keti_ray.constants import GPU_RESOURCE
from keti_ray.podenv import CONTAINER_STATUS_DIR as STATUS

sys.path.insert(0, str(Path(__file__).parents[1] / "deviceplugin"))
from kubelet_emulator import KubeletEmulator  # noqa: E402

FAKE_MPS = str(Path(__file__).parent / "fake_mps" / "nvidia-cuda-mps-control")


@pytest.mark.parametrize(
    "line, want",
    [
        ('{"pid": 12, "mechanism": "mps", "sms": 34}', {"pid": 12, "mechanism": "mps", "sms": 34}),
        (
            "pid=12 mechanism=green-ctx sms=72 mem_peak_mib=512",
            {"pid": 12, "mechanism": "green-ctx", "sms": 72, "mem_peak_mib": 512},
        ),
        ("garbage words", None),
        ("", None),
        ("[1, 2]", None),
    ],
)
def test_parse_status_line(line, want):
    assert parse_status_line(line) == want


def test_read_status_dir_takes_each_files_last_line(short_tmp):
    d = short_tmp / "abc123"
    d.mkdir()
    (d / "101.status").write_text("pid=101 mechanism=mps sms=32\npid=101 mechanism=mps sms=34\n")
    (d / "102.status").write_text("\n")
    (short_tmp / "stray-file").write_text("pid=1")
    assert read_status_dir(short_tmp) == [
        {"allocation_id": "abc123", "file": "101.status", "pid": 101, "mechanism": "mps", "sms": 34}
    ]


@pytest.fixture
def agent_env(short_tmp):
    kubelet = KubeletEmulator(short_tmp / "dp").start()
    sink = ListSink()
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        simulate=2,
        npu=True,
        sysfs_root=str(short_tmp / "nosys"),
        dev_root=str(short_tmp / "nodev"),
        mps_binary=FAKE_MPS,
        mps_pipe_dir=str(short_tmp / "mps"),
        mps_log_dir=str(short_tmp / "mpslog"),
        status_host_dir=str(short_tmp / "status"),
        limits_host_dir=str(short_tmp / "limits"),
        telemetry_interval_s=0.1,
    )
    agent = NodeAgent(cfg, sink)
    yield agent, kubelet, sink
    agent.stop(stop_mps=True)
    kubelet.stop()


def test_agent_partition_table_and_telemetry(agent_env):
    agent, kubelet, sink = agent_env
    assert kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 200, 5)
    assert kubelet.wait_for(lambda k: k.capacity("keti.re.kr/npu") == 1, 5)
    info = agent.info()
    assert info["mps"]["running"] and info["plugins"][GPU_RESOURCE]["registered"]

    _, r25 = kubelet.admit(GPU_RESOURCE, 25)
    _, r100 = kubelet.admit(GPU_RESOURCE, 100)
    a25 = r25.annotations["keti.re.kr/allocation-id"]
    # the shim (inside the pod) writes a status line into the mounted status directory
    status_host = next(m.host_path for m in r25.mounts if m.container_path == STATUS)
    line = {"pid": 4242, "mechanism": "mps-affinity", "sms": 34, "pod": "default/a"}
    Path(status_host, "4242").write_text(json.dumps(line) + "\n")

    rows = {r["allocation_id"]: r for r in agent.partition_table()}
    assert rows[a25]["units"] == 25 and rows[a25]["bless_limit_pct"] == 25
    assert rows[a25]["mechanism"] == "mps-affinity" and rows[a25]["reported_by_shim"]
    assert rows[a25]["pod"] == "default/a" and rows[a25]["pids"] == [4242]
    a100 = r100.annotations["keti.re.kr/allocation-id"]
    assert rows[a100]["mechanism"] == "whole-gpu" and rows[a100]["units"] == 100
    assert rows[a25]["gpu_uuid"] != rows[a100]["gpu_uuid"]

    batch = agent.sample_now()
    gpus = {r["gpu_uuid"]: r for r in batch if r["kind"] == "gpu"}
    assert gpus[rows[a25]["gpu_uuid"]]["sm_pct"] == 25.0
    assert gpus[rows[a100]["gpu_uuid"]]["sm_pct"] == 100.0
    shim = [r for r in batch if r["kind"] == "shim"]
    assert shim and shim[0]["allocation_id"] == a25 and shim[0]["sms"] == 34
    assert any(r["kind"] == "gpu" for r in sink.records)  # the sampler thread delivered too


def test_gpu_uuid_limits_the_agent(short_tmp, monkeypatch):
    from keti_ray.deviceplugin.nvml import SimulatedBackend

    uuid = SimulatedBackend(2).discover()[1].uuid
    monkeypatch.setenv("GPU_UUID", uuid)
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        simulate=2,
        mps=False,
        status_host_dir=str(short_tmp / "s"),
        limits_host_dir=str(short_tmp / "limits"),
    )
    agent = NodeAgent(cfg, ListSink())
    try:
        assert [g["uuid"] for g in agent.info()["gpus"]] == [uuid]
    finally:
        agent.stop()
    monkeypatch.setenv("GPU_UUID", "GPU-not-here")
    with pytest.raises(ValueError, match="GPU_UUID names"):
        NodeAgent(cfg, ListSink())


def test_agent_cli_local_writes_telemetry(short_tmp):
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = short_tmp / "telemetry.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keti_ray.cli import app, plugin_cmd; app(prog_name='keti-ray')",
            "agent",
            "--local",
            "--simulate", "1",
            "--no-mps",
            "--plugin-dir", str(short_tmp / "dp"),
            "--status-dir", str(short_tmp / "st"),
            "--limits-dir", str(short_tmp / "lim"),
            "--interval", "0.1",
            "--telemetry-out", str(out),
            "--run-for", "1.5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[0])
    assert len(info["gpus"]) == 1 and info["simulated"]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) >= 5 and all(r["kind"] == "gpu" for r in records)
    assert not (short_tmp / "dp" / "keti-gpu.sock").exists()


def test_agent_reads_the_partition_of_a_plugin_served_elsewhere(short_tmp):
    """The DaemonSet layout: `keti-ray plugin gpu` serves Allocate, the agent (another
    process) only reads the status directory."""
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import SimulatedBackend

    kubelet = KubeletEmulator(short_tmp / "dp").start()
    plugin = GpuPlugin(
        SimulatedBackend(2, seed="node-a"),
        short_tmp / "dp",
        status_host_dir=str(short_tmp / "st"),
        limits_host_dir=str(short_tmp / "limits"),
    )
    plugin.start()
    cfg = AgentConfig(
        node_name="node-a",
        simulate=2,
        serve_plugins=False,
        mps=False,
        status_host_dir=str(short_tmp / "st"),
        limits_host_dir=str(short_tmp / "limits"),
        plugin_dir=str(short_tmp / "unused"),
    )
    agent = NodeAgent(cfg, ListSink())
    try:
        assert agent.info()["plugins"] == {} and len(agent.info()["gpus"]) == 2
        assert kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 200, 5)
        _, resp = kubelet.admit(GPU_RESOURCE, 40)
        (row,) = agent.partition_table()
        assert row["allocation_id"] == resp.annotations["keti.re.kr/allocation-id"]
        assert row["units"] == 40 and row["mechanism"] == "shim"
        gpu = {r["gpu_uuid"]: r for r in agent.sample_now() if r["kind"] == "gpu"}
        assert gpu[row["gpu_uuid"]]["allocated_units"] == 40
        assert not (short_tmp / "unused").exists()  # no plugin served by the agent
    finally:
        agent.stop()
        plugin.stop()
        kubelet.stop()


def test_agent_samples_land_in_the_telemetry_store(short_tmp):
    """StoreSink: per-GPU utilisation and per-allocation grants as `samples` rows; the grant
    is what the shim's status line says it granted, unknown (None) until one exists."""
    from keti_ray.agent.telemetry import StoreSink
    from keti_ray.telemetry import TelemetryStore

    kubelet = KubeletEmulator(short_tmp / "dp").start()
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        node_name="node-s",
        simulate=2,
        mps=False,
        status_host_dir=str(short_tmp / "st"),
        limits_host_dir=str(short_tmp / "lim"),
        telemetry_interval_s=0.1,
    )
    agent = NodeAgent(cfg, StoreSink(short_tmp / "store"))
    try:
        assert kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 200, 5)
        _, resp = kubelet.admit(GPU_RESOURCE, 25)
        aid = resp.annotations["keti.re.kr/allocation-id"]
        time.sleep(0.4)
        status_host = next(m.host_path for m in resp.mounts if m.container_path == STATUS)
        # the shim's line (native/vai_accelerator/src/status.c): 25% of 132 SMs -> 32 granted
        line = {"pid": 7, "gpu_uuid": "x", "mechanism": "mps", "limit_pct": 25,
                "sms_device": 132, "sms_asked": 33, "sms_granted": 32, "phase": "init"}  # fmt: skip
        Path(status_host, "vai-7.json").write_text(json.dumps(line) + "\n")
        time.sleep(0.4)
    finally:
        agent.stop()
        kubelet.stop()
    rows = TelemetryStore(short_tmp / "store", writer="reader").read("samples").to_pylist()
    assert {r["node"] for r in rows} == {"node-s"}
    grants = [r for r in rows if r["pod"] == f"alloc:{aid}"]
    before = [r for r in grants if r["mechanism"] == "shim"]
    after = [r for r in grants if r["mechanism"] == "mps"]
    assert before and all(r["sm_pct_granted"] is None for r in before)
    assert after and all(r["sm_pct_granted"] == round(100 * 32 / 132, 3) for r in after)
    busy = [r for r in rows if r["pod"] is None and r["gpu_uuid"] == grants[0]["gpu_uuid"]]
    assert busy and busy[-1]["sm_util_pct"] == 25.0  # the simulated model follows the grant


@pytest.mark.parametrize("mps", [True, False])
def test_agent_mps_setting_reaches_the_mps_mounts(short_tmp, mps):
    """With MPS, a share gets the node's pipe directory (the host path, not the daemon's own
    path inside the agent's container) read-only and the shm directory; without MPS, neither."""
    kubelet = KubeletEmulator(short_tmp / "dp").start()
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        simulate=1,
        mps=mps,
        mps_binary=FAKE_MPS,
        mps_pipe_dir=str(short_tmp / "mps"),
        mps_pipe_host_dir="/node/mps-pipe",
        mps_shm_host_dir="/node/mps-shm",
        mps_log_dir=str(short_tmp / "mpslog"),
        status_host_dir=str(short_tmp / "status"),
        limits_host_dir=str(short_tmp / "limits"),
    )
    agent = NodeAgent(cfg, ListSink())
    try:
        assert kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 100, 5)
        _, resp = kubelet.admit(GPU_RESOURCE, 40)
        mounts = {m.container_path: (m.host_path, m.read_only) for m in resp.mounts}
        if mps:
            assert mounts["/tmp/nvidia-mps"] == ("/node/mps-pipe", True)
            assert mounts["/dev/shm"] == ("/node/mps-shm", False)
        else:
            assert "/tmp/nvidia-mps" not in mounts and "/dev/shm" not in mounts
    finally:
        agent.stop(stop_mps=True)
        kubelet.stop()
