"""keti_ray.shim and `keti-ray shim ...`: locating/building the library, the env and mounts a
pod needs, the `vai-accelerator-binary` ConfigMap. The memory-limit parser is checked against
the C library's own parser (same values, same verdicts)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keti_ray import shim
from keti_ray.cli import _register, app
from keti_ray.constants import (
    MPS_PIPE_DIR,
    SHIM_CONFIGMAP_NAME,
    SHIM_CONTAINER_PATH,
    SHIM_HOST_DIR,
    SHIM_LIBRARY_NAME,
)
from keti_ray.podenv import gpu_pod_env

_register()
runner = CliRunner()

MEMORY_VALUES = [
    "1",
    "536870912",
    "512Mi",
    "20Gi",
    "4Ki",
    "2Ti",
    "",
    "0",
    "0Gi",
    "-1",
    "1.5Gi",
    "20G",
    "20GB",
    "Gi",
    "abc",
    "20 Gi",
    "20gi",
    "99999999999Ti",
]


@pytest.mark.parametrize("value", MEMORY_VALUES)
def test_memory_parser_agrees_with_the_c_library(native_build: Path, value: str) -> None:
    try:
        shim.parse_memory_limit(value)
        python_ok = True
    except ValueError as exc:
        assert "VAI_MEMORY_LIMIT" in str(exc) and "Gi" in str(exc)
        python_ok = False
    env = {
        "PATH": os.environ["PATH"],
        "LD_LIBRARY_PATH": str(native_build / "fake"),
        "LD_PRELOAD": str(native_build / SHIM_LIBRARY_NAME),
        "VAI_MEMORY_LIMIT": value,
        "EXPECT_RC": "0" if python_ok else "800",
    }
    proc = subprocess.run([str(native_build / "test_client"), "init"], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_memory_parser_values() -> None:
    assert shim.parse_memory_limit("512Mi") == 512 << 20
    assert shim.parse_memory_limit("20Gi") == 20 << 30
    assert shim.parse_memory_limit("4096") == 4096


@pytest.mark.parametrize("pct", [0, 101, -5, 50.0, "50", True])
def test_bad_pct_is_refused_naming_the_field(pct: object) -> None:
    with pytest.raises(ValueError, match="BLESS_LIMIT_PCT"):
        shim.shim_env(pct)  # type: ignore[arg-type]


def test_env_for_a_pod_matches_the_device_plugin() -> None:
    env = shim.shim_env(47, "4Gi")
    plugin = gpu_pod_env(["GPU-x"], 47, memory_limit_mib=4096)
    assert env["LD_PRELOAD"] == plugin["LD_PRELOAD"] == SHIM_CONTAINER_PATH
    assert env["BLESS_LIMIT_PCT"] == plugin["BLESS_LIMIT_PCT"] == "47"
    assert env["VAI_STATUS_DIR"] == plugin["VAI_STATUS_DIR"]
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == plugin["CUDA_MPS_PIPE_DIRECTORY"] == MPS_PIPE_DIR
    assert shim.parse_memory_limit(env["VAI_MEMORY_LIMIT"]) == shim.parse_memory_limit(
        plugin["VAI_MEMORY_LIMIT"]
    )


def test_env_at_100_preloads_without_a_cap() -> None:
    env = shim.shim_env(100, status_dir=None, mps_pipe_dir=None)
    assert env == {"LD_PRELOAD": SHIM_CONTAINER_PATH}


def test_env_rejects_bad_fields_and_changes_nothing() -> None:
    with pytest.raises(ValueError, match="VAI_MEMORY_LIMIT"):
        shim.shim_env(50, "20G")
    with pytest.raises(ValueError, match="VAI_STATUS_DIR"):
        shim.shim_env(50, status_dir="relative/dir")
    with pytest.raises(ValueError, match="VAI_LOG_LEVEL"):
        shim.shim_env(50, log_level="loud")


def test_mounts_and_pod_fragment() -> None:
    mounts = shim.shim_mounts("/var/run/keti-ray/vai-status/abc")
    assert mounts[0] == shim.Mount(
        SHIM_CONTAINER_PATH, f"{SHIM_HOST_DIR}/{SHIM_LIBRARY_NAME}", True
    )
    assert mounts[1] == shim.Mount(MPS_PIPE_DIR, MPS_PIPE_DIR, False)
    assert mounts[2].host_path == "/var/run/keti-ray/vai-status/abc" and not mounts[2].read_only
    frag = shim.pod_fragment(25, "/var/run/keti-ray/vai-status/abc", "1Gi")
    env = {e["name"]: e["value"] for e in frag["env"]}
    assert env["BLESS_LIMIT_PCT"] == "25" and env["VAI_MEMORY_LIMIT"] == "1Gi"
    names = {v["name"] for v in frag["volumes"]}
    assert {m["name"] for m in frag["volumeMounts"]} == names and len(names) == 3
    paths = {m["mountPath"] for m in frag["volumeMounts"]}
    assert env["LD_PRELOAD"] in paths and env["VAI_STATUS_DIR"] in paths


def test_find_library_prefers_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / SHIM_LIBRARY_NAME
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv(shim.ENV_SHIM_LIBRARY, str(lib))
    assert shim.library_candidates()[0] == lib
    assert shim.find_library() == lib


def test_build_library_builds_this_checkout(native_build: Path) -> None:
    lib = shim.build_library()
    assert lib == native_build / SHIM_LIBRARY_NAME and lib.read_bytes()[:4] == b"\x7fELF"


def test_build_library_reports_a_broken_build(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("all:\n\t@echo compiler exploded >&2; exit 3\n")
    with pytest.raises(shim.ShimError, match="compiler exploded"):
        shim.build_library(tmp_path)
    with pytest.raises(shim.ShimError, match="no Makefile"):
        shim.build_library(tmp_path / "missing")


def test_configmap_carries_the_library(native_build: Path) -> None:
    lib = native_build / SHIM_LIBRARY_NAME
    cm = shim.configmap_manifest(lib, "gpu-system")
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == SHIM_CONFIGMAP_NAME
    assert cm["metadata"]["namespace"] == "gpu-system"
    assert base64.b64decode(cm["binaryData"][SHIM_LIBRARY_NAME]) == lib.read_bytes()


def test_configmap_refusals(tmp_path: Path, native_build: Path) -> None:
    big = tmp_path / "big.so"
    big.write_bytes(b"\x7fELF" + b"\0" * shim.CONFIGMAP_MAX_BYTES)
    with pytest.raises(ValueError, match="at most"):
        shim.configmap_manifest(big)
    text = tmp_path / "text.so"
    text.write_text("not a library")
    with pytest.raises(ValueError, match="not an ELF"):
        shim.configmap_manifest(text)
    with pytest.raises(ValueError, match="namespace"):
        shim.configmap_manifest(native_build / SHIM_LIBRARY_NAME, "Bad_NS")


# ---- the CLI ------------------------------------------------------------------------------------


def test_cli_configmap_writes_yaml(native_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "cm.yaml"
    res = runner.invoke(app, ["shim", "configmap", "--namespace", "keti", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cm = yaml.safe_load(out.read_text())
    assert (
        cm["metadata"]
        == shim.configmap_manifest(native_build / SHIM_LIBRARY_NAME, "keti")["metadata"]
    )
    lib = (native_build / SHIM_LIBRARY_NAME).read_bytes()
    assert base64.b64decode(cm["binaryData"][SHIM_LIBRARY_NAME]) == lib


def test_cli_configmap_stdout_and_bad_namespace(native_build: Path) -> None:
    res = runner.invoke(app, ["shim", "configmap"])
    assert (
        res.exit_code == 0 and yaml.safe_load(res.stdout)["metadata"]["namespace"] == "kube-system"
    )
    res = runner.invoke(app, ["shim", "configmap", "-n", "NOT OK"])
    assert res.exit_code == 2 and "namespace" in res.output


def test_cli_env_exports_and_runs(native_build: Path) -> None:
    res = runner.invoke(app, ["shim", "env", "--pct", "30", "--memory", "2Gi", "--json"])
    assert res.exit_code == 0, res.output
    env = json.loads(res.stdout)
    assert env["BLESS_LIMIT_PCT"] == "30" and env["VAI_MEMORY_LIMIT"] == "2Gi"
    assert Path(env["LD_PRELOAD"]).is_file()
    res = runner.invoke(app, ["shim", "env", "--pct", "30"])
    assert "export BLESS_LIMIT_PCT=30" in res.stdout.splitlines()


def test_cli_env_refuses_bad_input(native_build: Path) -> None:
    for args, field in (
        (["--pct", "0"], "BLESS_LIMIT_PCT"),
        (["--pct", "50", "--memory", "1G"], "VAI_MEMORY_LIMIT"),
    ):
        res = runner.invoke(app, ["shim", "env", *args])
        assert res.exit_code == 2 and field in res.output


def test_cli_env_pod(native_build: Path) -> None:
    res = runner.invoke(app, ["shim", "env", "--pct", "47", "--pod", "--status-host-dir", "/s/a1"])
    assert res.exit_code == 0, res.output
    frag = yaml.safe_load(res.stdout)
    assert {"name": "BLESS_LIMIT_PCT", "value": "47"} in frag["env"]
    assert any(v["hostPath"]["path"] == "/s/a1" for v in frag["volumes"])


def test_cli_path_as_a_user_runs_it(native_build: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(shim.REPO_DIR))
    proc = subprocess.run(
        [sys.executable, "-m", "keti_ray.cli", "shim", "path"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0 and Path(proc.stdout.strip()).is_file(), proc.stderr
