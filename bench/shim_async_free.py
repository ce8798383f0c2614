"""Time per stream-ordered free through the shim: this tree's per-stream FIFOs against main's list.

The shim credits a cuMemFreeAsync once the event recorded after it has completed. main's
`native/vai_accelerator/src/shim.c` kept one list and rescanned it from its start at every
credit and every allocation (quadratic in the frees pending); this tree keeps one FIFO per stream
and polls each stream's oldest entry. Both are built here with gcc, in the same run, against the
same fake libcuda.so.1 (tests/fake_cuda.c, built with room for 64Ki live allocations and queued
operations per stream) and the same cap on pending frees (VAI_MAX_PENDING=65536: main's 4096 is
raised in its copy so that 16Ki frees stay pending in both). No GPU is involved: the figures are
the shim's own bookkeeping plus the fake's calls, the same for both.

Two patterns (tests/bench_async_free.c), N = 1Ki, 4Ki, 16Ki pending frees on 4 streams:
- `window`: N alloc + cuMemFreeAsync pairs with none run yet (every allocation polls the
  pending frees), then all run and one cuMemGetInfo credits them;
- `behind`: half the frees on a stream that does not run, half on streams that do; one
  cuMemGetInfo credits the second half, queued behind the first.
Figure: microseconds per free (pairs + credit, divided by N), the best of `--repeat` runs (the
baseline above 4Ki: one run, it takes tens of seconds), and the ratio main / this tree.

    python bench/shim_async_free.py [--sizes 1024,4096,16384] [--repeat 3]
writes bench/results/shim_async_free.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native" / "vai_accelerator"
OUT = ROOT / "bench" / "results" / "shim_async_free.json"
SRCS = ["shim.c", "config.c", "memtrack.c", "status.c", "sm_caller.c"]
HDRS = ["vai_cuda.h", "vai_internal.h"]
MAX_PENDING = 65536
CAP_LINE = "#define VAI_MAX_PENDING 4096"
STREAMS = 4
SLOW_BASELINE_N = 4096  # above it the baseline takes tens of seconds a run: run it once
WARN = ["-std=c11", "-O2", "-Wall", "-Wno-unused-parameter"]


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def _baseline_sources(dst: Path, ref: str) -> str:
    """main's src/ into dst, with its pending cap raised to MAX_PENDING; returns main's commit."""
    dst.mkdir(parents=True)
    rev = _run(["git", "-C", str(ROOT), "rev-parse", "--short", ref]).stdout.strip()
    for name in SRCS + HDRS:
        text = _run(
            ["git", "-C", str(ROOT), "show", f"{ref}:native/vai_accelerator/src/{name}"]
        ).stdout
        if name == "shim.c":
            if CAP_LINE not in text:
                raise RuntimeError(f"{ref}'s shim.c has no line {CAP_LINE!r} to raise")
            text = text.replace(CAP_LINE, f"#define VAI_MAX_PENDING {MAX_PENDING}")
        (dst / name).write_text(text)
    return rev


def _build_shim(src: Path, out: Path) -> Path:
    lib = out / "libvai_accelerator.so"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        "gcc",
        *WARN,
        "-fPIC",
        "-fvisibility=hidden",
        "-shared",
        f"-DVAI_MAX_PENDING={MAX_PENDING}",
    ]
    _run([*cmd, "-o", str(lib), *(str(src / s) for s in SRCS), "-ldl", "-lpthread"])
    return lib


def _build_common(tmp: Path) -> tuple[Path, Path]:
    """The fake driver (room for MAX_PENDING live allocations and queued ops) and the driver."""
    fake_dir = tmp / "fake"
    fake_dir.mkdir()
    inc = f"-I{NATIVE / 'src'}"
    big = [f"-DFAKE_MAX_ALLOCS={MAX_PENDING}", f"-DN_OPS={2 * MAX_PENDING}"]
    fake = [*WARN, "-fPIC", "-shared", *big, inc, "-Wl,-soname,libcuda.so.1", "-Wl,-Bsymbolic"]
    fake_src = NATIVE / "tests" / "fake_cuda.c"
    _run(["gcc", *fake, "-o", str(fake_dir / "libcuda.so.1"), str(fake_src), "-lpthread"])
    exe = tmp / "bench_async_free"
    src = NATIVE / "tests" / "bench_async_free.c"
    _run(["gcc", *WARN, inc, "-o", str(exe), str(src), "-ldl"])
    return fake_dir, exe


def _once(exe: Path, lib: Path, fake_dir: Path, mode: str, n: int) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": str(fake_dir)}
    env |= {"LD_PRELOAD": str(lib), "VAI_MEMORY_LIMIT": "8Gi"}
    proc = _run([str(exe), mode, str(n), str(STREAMS)], env=env, timeout=900)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if not (row["charged_while_pending"] and row["quota_whole_after"]):
        raise RuntimeError(f"wrong accounting: {row}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024,4096,16384", help="pending frees N, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    ap.add_argument("--baseline", default="main", help="git ref of the old shim.c")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if shutil.which("gcc") is None:
        print("gcc is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shim-async-bench-") as t:
        tmp = Path(t)
        base_rev = _baseline_sources(tmp / "base-src", args.baseline)
        libs = {
            "baseline": _build_shim(tmp / "base-src", tmp / "base"),
            "new": _build_shim(NATIVE / "src", tmp / "new"),
        }
        fake_dir, exe = _build_common(tmp)
        rows = []
        for mode in ("window", "behind"):
            for n in sizes:
                row: dict[str, Any] = {"mode": mode, "n": n, "streams": STREAMS}
                for name, lib in libs.items():
                    reps = 1 if name == "baseline" and n > SLOW_BASELINE_N else args.repeat
                    runs = [_once(exe, lib, fake_dir, mode, n) for _ in range(reps)]
                    best = min(runs, key=lambda r: r["total_s"])
                    row[name] = {
                        "us_per_free": round(best["total_s"] / n * 1e6, 3),
                        "pairs_s": best["pairs_s"],
                        "credit_s": best["credit_s"],
                        "runs_total_s": [r["total_s"] for r in runs],
                    }
                row["ratio_baseline_over_new"] = round(
                    row["baseline"]["us_per_free"] / row["new"]["us_per_free"], 2
                )
                rows.append(row)
                print(
                    f"{mode:6s} N={n:6d}: baseline {row['baseline']['us_per_free']:9.3f} us/free, "
                    f"new {row['new']['us_per_free']:7.3f} us/free, "
                    f"ratio {row['ratio_baseline_over_new']:.2f}",
                    flush=True,
                )
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    result = {
        "benchmark": "shim_async_free",
        "what": "us per cuMemFreeAsync (alloc + free + credit), N pending, fake driver",
        "baseline": f"{args.baseline} ({base_rev}) native/vai_accelerator/src, cap raised",
        "new": f"working tree at {head}",
        "max_pending": MAX_PENDING,
        "repeat": args.repeat,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
