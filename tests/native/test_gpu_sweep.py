"""The shim's GPU acceptance run (issue 11), reproducible: runs native/vai_accelerator/gpu/sweep.py
in the two device calls the recorded results came from, then bench/shim_report.py's checks on
what it measured. Needs an NVIDIA GPU with MPS tools, nvcc and PyTorch (skipped otherwise), and
root (the preload sections write /etc/ld.so.preload and /etc/vai/limits and restore them)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keti_ray.shim import NATIVE_DIR

SWEEP = NATIVE_DIR / "gpu" / "sweep.py"
CALLS = [
    [
        "build",
        "markers",
        "reference",
        "mps_census",
        "mps_gemm",
        "mps_repro",
        "mps_perf",
        "mps_pair",
        "mps_launch",
        "mps_preload",
    ],
    ["build", "green_census", "green_gemm", "quota", "green_preload", "green_launch"],
]


def _report():
    spec = importlib.util.spec_from_file_location(
        "shim_report", NATIVE_DIR.parents[1] / "bench" / "shim_report.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.gpu
def test_gpu_sweep_passes_every_check(tmp_path: Path) -> None:
    if not Path("/dev/nvidiactl").exists() or shutil.which("nvcc") is None:
        pytest.skip("no NVIDIA GPU / nvcc")
    if shutil.which("nvidia-cuda-mps-control") is None or os.geteuid() != 0:
        pytest.skip("needs the MPS tools and root")
    results = tmp_path / "results"
    results.mkdir()
    for i, sections in enumerate(CALLS):
        out = tmp_path / f"out{i}"
        env = dict(os.environ, OUT=str(out))
        proc = subprocess.run(
            [sys.executable, str(SWEEP), *sections, "--budget", "3000"],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        shutil.copy(out / "sweep.json", results / f"sweep_{i}.json")
    report = _report()
    checks = report.evaluate(report.load(results))
    failed = [(c["check"], c["pass"]) for c in checks if c["pass"] is not True]  # None: not run
    assert checks and not failed, failed
