"""Fixtures for the agent tests: the MPS control emulator on PATH, short temporary dirs."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

FAKE_MPS_DIR = Path(__file__).parent / "fake_mps"


@pytest.fixture
def short_tmp():
    d = Path(tempfile.mkdtemp(prefix="kag", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_mps(monkeypatch, short_tmp):
    """PATH with the nvidia-cuda-mps-control emulator first; kills any daemon left behind."""
    from keti_ray.agent.mps import MpsDaemon

    monkeypatch.setenv("PATH", f"{FAKE_MPS_DIR}{os.pathsep}{os.environ['PATH']}")
    daemons: list[MpsDaemon] = []

    def make(**kw) -> MpsDaemon:
        d = MpsDaemon(short_tmp / "mps-pipe", short_tmp / "mps-log", **kw)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        for pid in d.pids():
            os.kill(pid, signal.SIGKILL)
