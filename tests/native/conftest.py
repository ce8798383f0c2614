"""Builds native/vai_accelerator once per session (gcc + make only: no CUDA, no GPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from keti_ray.shim import NATIVE_DIR

BUILD = NATIVE_DIR / "build"
TARGETS = ["all", "build/fake/libcuda.so.1", "build/test_client", "build/test_units"]


@pytest.fixture(scope="session")
def native_build() -> Path:
    """The build directory holding libvai_accelerator.so, the fake libcuda.so.1 and test_client."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make and gcc are needed to build the shim")
    proc = subprocess.run(
        ["make", "-C", str(NATIVE_DIR), *TARGETS], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return BUILD
