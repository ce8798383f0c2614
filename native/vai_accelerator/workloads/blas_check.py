"""PyTorch matmul correctness across dtypes, sizes and BLAS back-ends, for the SM count this
process runs with (diagnoses wrong GEMM results under a restricted SM count). One JSON line."""

from __future__ import annotations

import json
import os

import torch

torch.backends.cuda.matmul.allow_tf32 = False
# VAI_BLAS_QUICK=1: bf16 only (a third of the time), for sweeps over many SM shares.
DTYPES = (
    (torch.bfloat16,)
    if os.environ.get("VAI_BLAS_QUICK") == "1"
    else (torch.bfloat16, torch.float16, torch.float32)
)


def rel_err(n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    rows = (a.cuda() @ b.cuda())[:128].double().cpu()
    ref = a[:128].double() @ b.double()
    return float((rows - ref).norm() / ref.norm())


def main() -> None:
    errs = {}
    libs = ["cublas", "cublaslt"]
    for lib in libs:
        torch.backends.cuda.preferred_blas_library(lib)
        for dtype in DTYPES:
            for n in (512, 1024, 2048, 4096):
                errs[f"{lib}/{str(dtype).split('.')[-1]}/{n}"] = rel_err(n, dtype)
    bad = sorted(k for k, v in errs.items() if not v < 1e-2)
    print(
        json.dumps(
            {
                "workload": "blas_check",
                "pid": os.getpid(),
                "limit_pct": os.environ.get("BLESS_LIMIT_PCT", ""),
                "mps_pct": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", ""),
                "sms_attr": torch.cuda.get_device_properties(0).multi_processor_count,
                "checked": len(errs),
                "bad": bad,
                "worst": max(errs.values()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
