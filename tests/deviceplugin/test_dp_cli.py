"""`keti-ray plugin gpu|npu` as real processes against the kubelet emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from keti_ray.constants import GPU_RESOURCE, NPU_RESOURCE

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "from keti_ray.cli import app, plugin_cmd; app(prog_name='keti-ray')"


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_plugin_gpu_cli_registers_and_stops_on_sigterm(kubelet, plugin_dir):
    proc = _run(
        [
            "plugin",
            "gpu",
            "--plugin-dir",
            str(plugin_dir),
            "--simulate",
            "2",
            "--status-dir",
            str(plugin_dir / "st"),
            "--limits-dir",
            str(plugin_dir / "lim"),
            "--run-for",
            "60",
        ]
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert first["resource"] == GPU_RESOURCE and len(first["gpus"]) == 2
        assert first["simulated"] and first["chooser"] == "fgd"
        assert kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 200, 10)
        _, resp = kubelet.admit(GPU_RESOURCE, 50)
        assert resp.envs["BLESS_LIMIT_PCT"] == "50"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not (plugin_dir / "keti-gpu.sock").exists()
    finally:
        proc.kill()
        proc.wait()


def test_plugin_npu_cli_emulated(kubelet, plugin_dir):
    proc = _run(
        ["plugin", "npu", "--plugin-dir", str(plugin_dir), "--simulate", "3", "--run-for", "60"]
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert first["resource"] == NPU_RESOURCE and first["emulated"]
        assert kubelet.wait_for(lambda k: k.capacity(NPU_RESOURCE) == 3, 10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_bad_options_name_the_field(plugin_dir):
    proc = _run(
        [
            "plugin",
            "gpu",
            "--plugin-dir",
            str(plugin_dir),
            "--simulate",
            "1",
            "--memory-limit",
            "lots",
        ]
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--memory-limit" in err and "20Gi" in err
    assert not (plugin_dir / "keti-gpu.sock").exists()
    proc = _run(["plugin", "gpu", "--plugin-dir", str(plugin_dir), "--simulate", "-1"])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--simulate" in err
