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
