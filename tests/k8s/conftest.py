"""Fixtures: the API-server emulator and `kubernetes` clients pointed at it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kubernetes import client

sys.path.insert(0, str(Path(__file__).parent))  # the emulator is imported as a plain module
from apiserver_emulator import ApiServerEmulator  # noqa: E402
from k8s_cluster import core_api  # noqa: E402


@pytest.fixture
def apiserver():
    emu = ApiServerEmulator(bookmark_interval_s=0.2, kubelet_grace_s=0.05).start()
    yield emu
    emu.stop()


@pytest.fixture
def api(apiserver) -> client.CoreV1Api:
    return core_api(apiserver.url)
