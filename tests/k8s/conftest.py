"""Fixtures: the API-server emulator and `kubernetes` clients pointed at it."""

from __future__ import annotations

import pytest
from kubernetes import client

# Helpers are imported by package path (tests.k8s.*), never as bare modules: a bare
# `conftest` or helper name resolves to whichever folder's was imported first.
from .apiserver_emulator import ApiServerEmulator
from .k8s_cluster import core_api


@pytest.fixture
def apiserver():
    emu = ApiServerEmulator(bookmark_interval_s=0.2, kubelet_grace_s=0.05).start()
    yield emu
    emu.stop()


@pytest.fixture
def api(apiserver) -> client.CoreV1Api:
    return core_api(apiserver.url)
