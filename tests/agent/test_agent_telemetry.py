"""Telemetry: the SMs the shim granted beside the booked share, and processes on a shared GPU
that run without the shim, from NVML's compute processes (simulated) and status lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from keti_ray.agent.node_agent import AgentConfig, NodeAgent
from keti_ray.agent.telemetry import ListSink, parse_status_line, shimless_pids
from keti_ray.constants import GPU_RESOURCE as R
from keti_ray.podenv import CONTAINER_STATUS_DIR as STATUS

sys.path.insert(0, str(Path(__file__).parents[1] / "deviceplugin"))
from kubelet_emulator import KubeletEmulator  # noqa: E402

# A line as native/vai_accelerator/src/status.c writes it, plus a field it may add later.
LINE = {
    "pid": 0, "hostname": "p", "pod": "ns/p", "gpu_uuid": "", "mechanism": "mps",
    "limit_pct": 25, "sms_device": 132, "sms_asked": 33, "sms_granted": 32,
    "memory_limit": 1 << 30, "memory_used": 0, "memory_peak": 0, "phase": "init",
    "time": 1.5, "future_field": {"x": 1},
}  # fmt: skip


def test_status_lines_keep_unknown_fields():
    got = parse_status_line(json.dumps(LINE))
    assert got["sms_granted"] == 32 and got["future_field"] == {"x": 1}


def test_shimless_compares_host_and_namespace_pids(short_tmp):
    proc = short_tmp / "proc"
    for pid, nspid, comm in (
        (1000, 7, "python"),
        (1001, 8, "python"),
        (1002, 1002, "nvidia-cuda-mps-server"),
    ):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "status").write_text(f"Name:\t{comm}\nNSpid:\t{pid}\t{nspid}\n")
        (proc / str(pid) / "comm").write_text(comm + "\n")
    # pid 7 (in its pod) wrote a status line; 8 did not; 1002 is the MPS server itself
    assert shimless_pids([1000, 1001, 1002], [{"pid": 7}], proc) == [1001]


def test_agent_reports_granted_beside_booked_and_flags_a_shimless_process(short_tmp):
    kubelet = KubeletEmulator(short_tmp / "dp").start()
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        node_name="tele-node",
        simulate=2,
        mps=False,
        status_host_dir=str(short_tmp / "st"),
        limits_host_dir=str(short_tmp / "lim"),
        telemetry_interval_s=60,
    )
    agent = NodeAgent(cfg, ListSink())
    shimmed = subprocess.Popen(["sleep", "30"])
    bare = subprocess.Popen(["sleep", "30"])
    try:
        assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
        _, resp = kubelet.admit(R, 25)
        aid = resp.annotations["keti.re.kr/allocation-id"]
        gpu = resp.envs["NVIDIA_VISIBLE_DEVICES"]
        status_host = next(m.host_path for m in resp.mounts if m.container_path == STATUS)
        line = {**LINE, "pid": shimmed.pid, "gpu_uuid": gpu}
        Path(status_host, f"vai-{shimmed.pid}.json").write_text(json.dumps(line) + "\n")
        agent.backend.set_processes(gpu, [shimmed.pid, bare.pid])

        batch = agent.sample_now()
        (alloc,) = [r for r in batch if r["kind"] == "allocation"]
        assert alloc["allocation_id"] == aid and alloc["units"] == 25
        assert alloc["sm_pct_booked"] == 25 and alloc["sms_booked"] == 32
        assert alloc["sms_granted"] == 32 and alloc["sms_device"] == 132
        gpus = {r["gpu_uuid"]: r for r in batch if r["kind"] == "gpu"}
        assert gpus[gpu]["shared"] and gpus[gpu]["shimless_pids"] == [bare.pid]
        assert gpus[gpu]["sms_granted"] == 32
        other = next(u for u in gpus if u != gpu)
        agent.backend.set_processes(other, [bare.pid])  # not shared: nothing to flag
        batch = agent.sample_now()
        gpus = {r["gpu_uuid"]: r for r in batch if r["kind"] == "gpu"}
        assert gpus[other]["shimless_pids"] == [] and not gpus[other]["shared"]
        assert (
            agent.metrics_text().count(f'keti_agent_shimless_processes{{gpu_uuid="{gpu}"}} 1.0')
            == 1
        )
    finally:
        for p in (shimmed, bare):
            p.kill()
            p.wait()
        agent.stop()
        kubelet.stop()
    assert os.path.exists(short_tmp)
