"""The MPS manager against the nvidia-cuda-mps-control emulator (real processes, real FIFOs)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from keti_ray.agent.mps import MpsDaemon, MpsError


def test_start_health_restart_stop(fake_mps):
    mps = fake_mps()
    assert mps.available() and not mps.healthy()
    mps.start()
    assert mps.healthy()
    (pid,) = mps.pids()
    assert "Starting control daemon" in (mps.log_dir / "control.log").read_text()
    mps.start()  # already healthy: no second daemon
    assert mps.pids() == [pid]
    assert mps.ensure() == "ok"

    os.kill(pid, signal.SIGKILL)  # the daemon dies
    deadline = time.monotonic() + 3
    while mps.pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not mps.healthy()
    assert mps.ensure() == "restarted"
    (pid2,) = mps.pids()
    assert pid2 != pid and mps.healthy() and mps.status().restarts == 1

    mps.stop()
    assert mps.pids() == [] and not mps.healthy()
    assert "Exiting" in (mps.log_dir / "control.log").read_text()
    mps.stop()  # idempotent


def test_missing_binary_is_reported_not_fatal(short_tmp):
    mps = MpsDaemon(short_tmp / "p", short_tmp / "l", binary="no-such-mps-control")
    assert not mps.available()
    assert mps.ensure() == "unavailable"
    assert mps.status().running is False
    with pytest.raises(MpsError, match="no-such-mps-control not found"):
        mps.start()


def _defaults(mps, devices=(0, 1)):
    out = {"thread": mps.ask("get_default_active_thread_percentage")}
    for d in devices:
        out[d] = mps.ask(f"get_default_device_pinned_mem_limit {d}")
    return out


def test_ceilings_reach_the_defaults_and_every_running_server(fake_mps):
    from keti_ray.agent.mps import MpsCeilings

    mps = fake_mps()
    mps.start()
    mps.ask("start_server -uid 0")  # a server already running (a client connected)
    (old,) = mps.servers()
    done = mps.apply_ceilings(MpsCeilings(25, {0: 2048, 1: 81559}))
    assert done["servers"] == [old]
    assert _defaults(mps) == {"thread": "25.0", 0: "2048M", 1: "81559M"}
    assert mps.ask(f"get_active_thread_percentage {old}") == "25.0"
    assert mps.ask(f"get_device_pinned_mem_limit {old} 0") == "2048M"
    mps.ask("start_server -uid 1000")  # a server started later takes the defaults
    new = max(mps.servers())
    assert mps.ask(f"get_active_thread_percentage {new}") == "25.0"
    with pytest.raises(MpsError, match="did not take"):
        mps.apply_ceilings(MpsCeilings(0, {}))  # 0 % is refused by the daemon
    assert _defaults(mps, ())["thread"] == "25.0"  # and changed nothing


def test_ceilings_for_the_node_allocations():
    from keti_ray.agent.ceilings import ceilings_for
    from keti_ray.deviceplugin.allocations import GpuAllocation
    from keti_ray.deviceplugin.nvml import GpuInfo

    gpus = [GpuInfo(0, "G0", "H200", 132, 143771), GpuInfo(1, "G1", "H200", 132, 143771)]

    def a(aid, gpu, units, mem):
        pct = units if units < 100 else None
        return GpuAllocation(aid, (gpu,), units, frozenset({aid}), pct, mem)

    assert ceilings_for([], gpus).thread_pct == 100  # nothing shared: no ceiling
    shares = [a("x", "G0", 25, "35942Mi"), a("y", "G0", 47, "67572Mi"), a("z", "G1", 10, "14377Mi")]
    c = ceilings_for(shares, gpus)
    assert c.thread_pct == 47 and c.pinned_mib == {0: 67572, 1: 14377}
    c = ceilings_for([*shares[:2], a("w", "G1", 100, None)], gpus)
    assert c.thread_pct == 100  # a whole-GPU pod may be an MPS client too: never cap it
    assert c.pinned_mib == {0: 67572, 1: 143771}
    c = ceilings_for([a("q", "G0", 30, None)], gpus)  # a share without a memory quota
    assert c.thread_pct == 30 and c.pinned_mib[0] == 143771


def test_the_agent_raises_the_ceiling_before_allocate_returns(fake_mps, short_tmp):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "deviceplugin"))
    from kubelet_emulator import KubeletEmulator

    from keti_ray.agent.node_agent import AgentConfig, NodeAgent
    from keti_ray.agent.telemetry import ListSink
    from keti_ray.constants import GPU_RESOURCE as R

    probe = fake_mps()  # same pipe directory as the agent's daemon: reads its state
    kubelet = KubeletEmulator(short_tmp / "dp").start()
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        simulate=2,
        memory_limit="none",
        mps_binary=str(probe.binary),
        mps_pipe_dir=str(probe.pipe_dir),
        mps_log_dir=str(probe.log_dir),
        status_host_dir=str(short_tmp / "st"),
        limits_host_dir=str(short_tmp / "lim"),
        telemetry_interval_s=5,
    )
    agent = NodeAgent(cfg, ListSink())
    try:
        assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
        assert probe.ask("get_default_active_thread_percentage") == "100.0"
        kubelet.admit(R, 25)
        assert probe.ask("get_default_active_thread_percentage") == "25.0"
        kubelet.admit(R, 60)
        assert probe.ask("get_default_active_thread_percentage") == "60.0"
        kubelet.admit(R, 100)
        assert probe.ask("get_default_active_thread_percentage") == "100.0"
        # the daemon dies and comes back: `quit` lost the values, the agent sets them again
        probe.stop()
        agent._mps_check()
        assert probe.ask("get_default_active_thread_percentage") == "100.0"
        assert agent.ceilings is not None and agent.ceilings.thread_pct == 100
    finally:
        agent.stop(stop_mps=True)
        kubelet.stop()
