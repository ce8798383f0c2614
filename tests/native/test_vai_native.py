"""The shim's CPU tests (native/vai_accelerator: `make test`), and the same library driven from
Python through ctypes, which reaches the driver with dlsym like PyTorch's loaders do.

A fake libcuda.so.1 (tests/fake_cuda.c, built by the Makefile) stands in for the driver: it
emulates what was measured on the lent H200 (see native/vai_accelerator/RESULTS.md) and counts
calls. Nothing here needs a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keti_ray.shim import NATIVE_DIR

HOOKS = [
    "cuInit",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuDevicePrimaryCtxRetain",
    "cuCtxCreate_v2",
    "cuCtxCreate_v3",
    "cuCtxCreate_v4",
    "cuMemAlloc_v2",
    "cuMemAllocManaged",
    "cuMemAllocAsync",
    "cuMemCreate",
    "cuMemGetInfo_v2",
    "dlsym",
]


def shim_env(build: Path, **extra: str) -> dict[str, str]:
    """A clean environment: the shim preloaded, the fake driver first on the library path."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": str(build / "fake")}
    env["LD_PRELOAD"] = str(build / "libvai_accelerator.so")
    env.update(extra)
    return env


def test_make_test_passes(native_build: Path) -> None:
    """`make -C native/vai_accelerator test`: unit tests, every fake-driver case, header check."""
    proc = subprocess.run(
        ["make", "-C", str(NATIVE_DIR), "test"], capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"shim tests: (\d+) passed, (\d+) failed", out)
    assert m and int(m.group(2)) == 0 and int(m.group(1)) >= 60, out
    assert re.search(r"units: passed \(\d+ checks, 0 failed\)", out), out


def test_library_exports_the_hooks_and_links_no_libcuda(native_build: Path) -> None:
    lib = native_build / "libvai_accelerator.so"
    code = "import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); [getattr(l, n) for n in sys.argv[2:]]"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lib), *HOOKS], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    needed = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    assert "libcuda" not in needed


CTYPES_DRIVER = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")            # ctypes resolves every name with dlsym
print("init", cuda.cuInit(0))
if len(sys.argv) > 1 and sys.argv[1] == "alloc":
    ctx = ctypes.c_void_p()
    assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 0) == 0
    assert cuda.cuCtxSetCurrent(ctx) == 0
    ptr = ctypes.c_ulonglong()
    print("alloc600", cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(600 << 20)))
    print("alloc600", cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(600 << 20)))
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
    print("info", free.value >> 20, total.value >> 20)
    fn = ctypes.CDLL("libcuda.so.1").fakecuda_ctx_sms
    fn.restype = ctypes.c_uint
    print("ctx_sms", fn(ctx))
"""


@pytest.mark.parametrize("value", ["0", "150", "-5", "abc", ""])
def test_bad_pct_fails_cuda_init_from_python(native_build: Path, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CTYPES_DRIVER],
        env=shim_env(native_build, BLESS_LIMIT_PCT=value),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.split() == ["init", "800"]  # CUDA_ERROR_NOT_PERMITTED: fail closed
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BLESS_LIMIT_PCT" in lines[0] and "1-99" in lines[0], proc.stderr


def test_quota_and_green_cap_reach_python_callers(native_build: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CTYPES_DRIVER, "alloc"],
        env=shim_env(native_build, BLESS_LIMIT_PCT="25", VAI_MEMORY_LIMIT="1Gi"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out == ["init 0", "alloc600 0", "alloc600 2", "info 424 1024", "ctx_sms 32"], out


def test_non_cuda_programs_are_untouched(native_build: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "print('hello')"],
        env=shim_env(native_build, BLESS_LIMIT_PCT="abc"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == "hello\n" and proc.stderr == ""


def test_status_line_for_the_node_agent(native_build: Path, tmp_path: Path) -> None:
    """The status line parses with the node agent's own reader (keti_ray.agent.telemetry)."""
    from keti_ray.agent.telemetry import read_status_dir

    alloc = tmp_path / "alloc-1"
    alloc.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CTYPES_DRIVER, "alloc"],
        env=shim_env(
            native_build,
            BLESS_LIMIT_PCT="50",
            VAI_MEMORY_LIMIT="1Gi",
            VAI_STATUS_DIR=str(alloc),
            POD_NAME="trainer-0",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_status_dir(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["allocation_id"] == "alloc-1" and row["pod"] == "trainer-0"
    assert row["mechanism"] == "green" and row["sms_granted"] == 64 and row["limit_pct"] == 50
    assert row["memory_limit"] == 1 << 30 and row["memory_peak"] == 600 << 20
    assert row["phase"] == "exit" and row["gpu_uuid"].startswith("GPU-")


@pytest.mark.gpu
def test_gpu_workload_a_is_capped_under_the_shim(native_build: Path) -> None:
    """On a machine with an NVIDIA GPU and nvcc: workload a sees the green-context cap.
    (The full acceptance runs are native/vai_accelerator/gpu/run_gpu.sh; see RESULTS.md.)"""
    if not Path("/dev/nvidiactl").exists():
        pytest.skip("no NVIDIA GPU")
    proc = subprocess.run(
        ["make", "-C", str(NATIVE_DIR), "build/workload_a"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip("cannot build workload a (nvcc?)")
    env = dict(os.environ, LD_PRELOAD=str(native_build / "libvai_accelerator.so"))
    env.update(BLESS_LIMIT_PCT="50", VAI_WL_SECONDS="0.5")
    run = subprocess.run(
        [str(native_build / "workload_a")], env=env, capture_output=True, text=True, timeout=120
    )
    res = json.loads(run.stdout.strip().splitlines()[-1])
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):  # MPS: the client sees and uses its share
        assert res["sms_seen"] == res["sms_attr"]
    else:  # green context: half the device's SMs, rounded down to 8 (attribute = device count)
        assert 0 < res["sms_seen"] <= res["sms_attr"] // 2 and res["sms_seen"] % 8 == 0


@pytest.mark.parametrize(
    ("file_pct", "env", "want_sms"),
    [(25, {"BLESS_LIMIT_PCT": "100"}, 32), (25, {}, 32), (50, {"BLESS_LIMIT_PCT": "25"}, 32)],
)
def test_limits_file_from_python_is_what_the_shim_enforces(
    native_build: Path, tmp_path: Path, file_pct: int, env: dict[str, str], want_sms: int
) -> None:
    """keti_ray.shim.limits_text writes the file the plugin mounts; the C shim reads it and the
    stricter of file and env wins (a pod's BLESS_LIMIT_PCT=100 cannot raise it)."""
    from keti_ray.shim import limits_text

    limits = tmp_path / "limits"
    limits.write_text(limits_text(file_pct, "1Gi", 132, "auto"))
    proc = subprocess.run(
        [sys.executable, "-c", CTYPES_DRIVER, "alloc"],
        env=shim_env(native_build, VAI_LIMITS_FILE=str(limits), VAI_MEMORY_LIMIT="8Gi", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out == ["init 0", "alloc600 0", "alloc600 2", "info 424 1024", f"ctx_sms {want_sms}"], (
        out
    )


def test_limits_text_rejects_bad_values() -> None:
    from keti_ray.shim import limits_text

    with pytest.raises(ValueError, match="VAI_DEVICE_SM_COUNT"):
        limits_text(25, device_sms=0)
    with pytest.raises(ValueError, match="VAI_MECHANISM"):
        limits_text(25, mechanism="mig")
    with pytest.raises(ValueError, match="VAI_MEMORY_LIMIT"):
        limits_text(25, memory_limit="20G")
    with pytest.raises(ValueError, match="BLESS_LIMIT_PCT"):
        limits_text(0)
    assert "BLESS_LIMIT_PCT" not in limits_text(100)
