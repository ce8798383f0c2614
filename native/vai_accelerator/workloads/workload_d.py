"""Workload d: a PyTorch bf16 matmul loop (runtime API only), run under the shim.

Prints one JSON line: the SM count PyTorch sees, the SMs its kernels actually ran on (a %smid
census through CuPy in the same process, when CuPy is there), sustained TFLOP/s over
VAI_WL_SECONDS, and a correctness check against a float64 CPU reference.

`--quota`: instead, report torch.cuda.mem_get_info() and allocate 256 MiB tensors until PyTorch
raises out-of-memory (run it with VAI_MEMORY_LIMIT set).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

SMID_SRC = r"""
extern "C" __global__ void smids(unsigned* flags, int iters) {
  unsigned id; asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  if (threadIdx.x == 0 && id < 1024) flags[id] = 1;
  float a = 1.f; for (int i = 0; i < iters; i++) a = a * 1.0000001f + 1e-7f;
  if (a == 0.f) flags[0] = 2;
}
"""


def sms_seen() -> int | None:
    """Distinct SM ids seen by a wide kernel launched in this process's current context."""
    try:
        import cupy as cp

        kernel = cp.RawKernel(SMID_SRC, "smids")
        flags = cp.zeros(1024, dtype=cp.uint32)
        kernel((8192,), (128,), (flags, cp.int32(20000)))
        cp.cuda.runtime.deviceSynchronize()
        return int((flags > 0).sum())
    except Exception as exc:  # CuPy missing or failing must not hide the PyTorch figures
        print(f"smid census unavailable: {exc}", file=sys.stderr)
        return None


def barrier() -> None:
    """Wait until VAI_BARRIER_N processes reached this point (files in VAI_BARRIER_DIR)."""
    d, n = os.environ.get("VAI_BARRIER_DIR"), int(os.environ.get("VAI_BARRIER_N", "0"))
    if not d or n <= 1:
        return
    open(os.path.join(d, str(os.getpid())), "w").close()
    t0 = time.time()
    while len(os.listdir(d)) < n and time.time() - t0 < 120:
        time.sleep(0.0005)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref).norm() / ref.norm())


def correctness(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Relative errors of GPU bf16 matmuls against float64 CPU references on fresh inputs: two
    square sizes, and 64 rows of the big product the timed loop runs (same kernel choice)."""
    errs = {}
    for n in (1024, 4096):
        x = torch.randn(n, n, dtype=torch.bfloat16)
        y = torch.randn(n, n, dtype=torch.bfloat16)
        errs[str(n)] = rel_err(x.cuda() @ y.cuda(), x.double() @ y.double())
    rows = (a @ b)[:64]
    errs[f"{a.shape[0]}[:64]"] = rel_err(rows, a[:64].double().cpu() @ b.double().cpu())
    return errs


def run_matmul() -> dict:
    seconds = float(os.environ.get("VAI_WL_SECONDS", "3"))
    props = torch.cuda.get_device_properties(0)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    seen = sms_seen()
    errs = correctness(a, b)
    rel = max(errs.values())
    barrier()
    t0 = time.perf_counter()
    t, iters = t0, 0
    while t - t0 < seconds:
        for _ in range(5):
            a @ b
        iters += 5
        torch.cuda.synchronize()
        t = time.perf_counter()
    dt = t - t0
    return {
        "workload": "d",
        "pid": os.getpid(),
        "limit_pct": os.environ.get("BLESS_LIMIT_PCT", ""),
        "torch": torch.__version__,
        "sms_attr": props.multi_processor_count,
        "sms_seen": seen,
        "tflops": round(2 * n**3 * iters / dt / 1e12, 1),
        "seconds": round(dt, 2),
        "rel_err": rel,
        "rel_errs": errs,
        "correct": rel < 1e-2,
    }


def run_quota() -> dict:
    free, total = torch.cuda.mem_get_info()
    chunk = 256 << 20
    held, error = [], None
    try:
        while len(held) < 4096:
            held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError as exc:
        error = type(exc).__name__ + ": " + str(exc).splitlines()[0][:160]
    allocated = len(held) * chunk
    del held
    torch.cuda.empty_cache()
    return {
        "workload": "d-quota",
        "pid": os.getpid(),
        "memory_limit": os.environ.get("VAI_MEMORY_LIMIT", ""),
        "mem_get_info_free": free,
        "mem_get_info_total": total,
        "allocated_before_oom": allocated,
        "oom": error,
    }


def main() -> int:
    torch.cuda.init()
    result = run_quota() if "--quota" in sys.argv else run_matmul()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
