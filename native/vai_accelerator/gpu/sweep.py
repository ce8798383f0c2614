"""The shim's GPU acceptance sweep (issue 11), on the lent H200. One driver for every run.

    python3 native/vai_accelerator/gpu/sweep.py SECTION... [--budget SECONDS]

Sections (each writes its rows into $OUT/sweep.json, re-written after every section, so a run
cut short still returns what it measured):
  build        make the shim, nvcc the probes (gpu/probes/*.cu) and workload c
  env          GPU, driver, torch; the device's SM count (a no-shim process is told it)
  markers      which installed libraries hold the cuBLAS marker strings (sm_caller.c)
  reference    full GPU, no shim, no MPS: the GEMM checks (fingerprints for 100%)
  mps_census   MPS, shim, every share 1..99: SMs told / run on, cooperative launch (static and
               shared CUDA runtime), the status line; the driver's own answer at a few shares;
               one share without VAI_DEVICE_SM_COUNT (NVML inside the process)
  mps_gemm     MPS, shim, every share 1..99: the GEMM and nn.Linear checks, K processes at once;
               controls with VAI_SM_ATTRIBUTE=granted (must be wrong where the bug is); the
               same shares again one at a time (concurrency must not change a bit)
  mps_perf     MPS: bf16 8192^3 at 25/50/75%, default (auto) vs VAI_SM_ATTRIBUTE=granted
  mps_pair     MPS: one process at 100%, then two at 50% at once, barrier-aligned
  mps_launch   MPS: empty-kernel launch rate, no shim vs shim 50, pinned, alternating
  mps_preload  MPS: /etc/ld.so.preload + /etc/vai/limits (25%) with LD_PRELOAD=libm and
               BLESS_LIMIT_PCT=100 in the env: census, cooperative launch, throughput
  green_*      the same without MPS (green contexts): green_census, green_gemm, green_launch,
               green_preload; quota: PyTorch's three allocators and a cuMemCreate/Map/Release loop
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # native/vai_accelerator
BUILD = ROOT / "build"
LIB = BUILD / "libvai_accelerator.so"
PROBES = HERE / "probes"
OUT = Path(os.environ.get("OUT", "/tmp/vai_sweep"))
PY = sys.executable or "python3"
CUDA = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
MPS_PIPE = "/tmp/vai-mps"
MPS_LOG = "/tmp/vai-mps-log"
STATUS = Path("/tmp/vai-status")
ALL_SHARES = list(range(1, 100))
GREEN_SHARES = sorted(set(range(5, 100, 5)) | {1, 2, 40, 60, 70, 74, 75, 80, 98, 99})
BAD_SHARES = [40, 60, 70, 74, 75, 80]  # wrong GEMMs under MPS when told the share (measured)
LIBM = "/lib/x86_64-linux-gnu/libm.so.6"
SHIM_KEYS = (
    "LD_PRELOAD",
    "BLESS_LIMIT_PCT",
    "VAI_MEMORY_LIMIT",
    "VAI_SM_ATTRIBUTE",
    "VAI_DEVICE_SM_COUNT",
    "VAI_LIMITS_FILE",
    "VAI_MECHANISM",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "PYTORCH_CUDA_ALLOC_CONF",
)

T0 = time.time()
RESULTS: dict = {"commands": [], "sections": {}}
DEVICE_SMS = 132
_seq = 0


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "sweep.json.tmp"
    tmp.write_text(json.dumps(RESULTS, indent=1, sort_keys=True))
    tmp.replace(OUT / "sweep.json")


def base_env(mps: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SHIM_KEYS}
    env["PYTHONUNBUFFERED"] = "1"
    if mps:
        env["CUDA_MPS_PIPE_DIRECTORY"] = MPS_PIPE
        env["CUDA_MPS_LOG_DIRECTORY"] = MPS_LOG
    else:
        env.pop("CUDA_MPS_PIPE_DIRECTORY", None)
        env.pop("CUDA_MPS_LOG_DIRECTORY", None)
    return env


def shim_env(pct: int | None, mps: bool, **extra: str) -> dict[str, str]:
    env = base_env(mps)
    env["LD_PRELOAD"] = str(LIB)
    env["VAI_LOG_LEVEL"] = "info"
    env["VAI_DEVICE_SM_COUNT"] = str(DEVICE_SMS)  # as the GPU plugin's Allocate sets it (NVML)
    if pct is not None:
        env["BLESS_LIMIT_PCT"] = str(pct)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 120, label: str = "") -> dict:
    """Runs one process; returns its last JSON line (or an error), its shim status line and the
    shim's lines on stderr that matter (who asked for the SM count, refusals)."""
    global _seq
    _seq += 1
    sdir = STATUS / f"{_seq:05d}"
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(parents=True)
    env = dict(env)
    if "LD_PRELOAD" in env or Path("/etc/ld.so.preload").exists():
        env["VAI_STATUS_DIR"] = str(sdir)
    t = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, so, se = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, so, se = (
            124,
            (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""),
            "",
        )
    row: dict = {"label": label, "rc": rc, "wall": round(time.time() - t, 2)}
    res = None
    for line in reversed(so.splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    row["result"] = res
    status = [json.loads(f.read_text().strip().splitlines()[-1]) for f in sdir.glob("vai-*.json")]
    if status:
        row["status"] = status[0]
    shim = [ln for ln in se.splitlines() if "vai_accelerator[" in ln]
    row["asked_from"] = sorted(
        {ln.split("SM count asked from ")[1] for ln in shim if "SM count asked from" in ln}
    )
    row["shim_errors"] = [
        ln for ln in shim if "refusing" in ln or "invalid" in ln or "cannot" in ln
    ][:5]
    if res is None:
        row["stderr_tail"] = se[-800:]
    return row


def record_cmd(section: str, what: str) -> None:
    RESULTS["commands"].append({"section": section, "command": what})


# ---- MPS daemon --------------------------------------------------------------------------------


def mps_start() -> None:
    for d in (MPS_PIPE, MPS_LOG):
        Path(d).mkdir(parents=True, exist_ok=True)
    env = base_env(True)
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, timeout=20, check=False)
    time.sleep(1)
    log("MPS daemon started")


def mps_stop() -> None:
    env = base_env(True)
    subprocess.run(
        ["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env, timeout=30, check=False
    )
    time.sleep(1)
    log("MPS daemon stopped")


# ---- sections ----------------------------------------------------------------------------------


def sec_build() -> dict:
    out: dict = {}
    cmds = {
        "make": ["make", "-s", "-C", str(ROOT), "all", "build/workload_c"],
        "coop_static": [
            "nvcc",
            "-O2",
            "-arch=sm_90",
            "-o",
            str(BUILD / "coop_static"),
            str(PROBES / "coop_census.cu"),
        ],
        "coop_shared": [
            "nvcc",
            "-O2",
            "-arch=sm_90",
            "-cudart",
            "shared",
            "-o",
            str(BUILD / "coop_shared"),
            str(PROBES / "coop_census.cu"),
        ],
        "vmm_loop": [
            "nvcc",
            "-O2",
            "-arch=sm_90",
            "-o",
            str(BUILD / "vmm_loop"),
            str(PROBES / "vmm_loop.cu"),
            f"-L{CUDA}/lib64/stubs",
            "-lcuda",
        ],
    }
    BUILD.mkdir(exist_ok=True)
    with cf.ThreadPoolExecutor(4) as ex:
        futs = {
            k: ex.submit(subprocess.run, c, capture_output=True, text=True, timeout=300)
            for k, c in cmds.items()
        }
        for k, f in futs.items():
            p = f.result()
            out[k] = {"rc": p.returncode, "tail": (p.stdout + p.stderr)[-600:]}
            record_cmd("build", " ".join(cmds[k]))
    return out


def sec_env() -> dict:
    global DEVICE_SMS
    q = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,compute_mode,mig.mode.current,power.limit",
            "--format=csv,noheader",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    tv = subprocess.run(
        [PY, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    r = run([str(BUILD / "coop_static")], base_env(False), label="env/no-shim")
    told = (r.get("result") or {}).get("told")
    if told:
        DEVICE_SMS = int(told)
    return {"gpu": q, "torch": tv, "device_sms": DEVICE_SMS, "no_shim": r}


def sec_markers() -> dict:
    """Which libraries hold the strings sm_caller.c looks for (built at run time there too)."""
    markers = ["CUBLASLT_" + "LOG_LEVEL", "CUBLAS_" + "LOGINFO_DBG"]
    tdir = subprocess.run(
        [PY, "-c", "import torch,os; print(os.path.dirname(torch.__file__))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    roots = [Path(tdir) / "lib", Path(tdir).parent / "nvidia", CUDA / "lib64"]
    found: dict = {}
    for root in roots:
        if not root.exists():
            continue
        for f in root.rglob("*.so*"):
            n = f.name
            if not any(
                s in n
                for s in (
                    "cublas",
                    "cudart",
                    "torch_cuda",
                    "cudnn_ops",
                    "cudnn_engines_precompiled",
                    "nccl",
                    "cufft",
                    "cusparse",
                    "cusolver",
                    "curand",
                )
            ):
                continue
            if f.is_symlink() or f.stat().st_size == 0:
                continue
            try:
                with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    found[str(f)] = {mk: m.find(mk.encode()) >= 0 for mk in markers}
            except (OSError, ValueError):
                continue
    return {"markers": markers, "libraries": found}


def gemm_cmd(mode: str = "check") -> list[str]:
    return [PY, str(PROBES / "gemm_check.py"), mode]


def sec_reference() -> dict:
    record_cmd("reference", "python3 gpu/probes/gemm_check.py check   (no shim, no MPS)")
    return {"check": run(gemm_cmd(), base_env(False), timeout=300, label="reference/full")}


def census_rows(shares: list[int], mps: bool, exe: str, **extra: str) -> list[dict]:
    rows = []
    for p in shares:
        r = run([str(BUILD / exe)], shim_env(p, mps, **extra), timeout=60, label=f"{exe}/{p}")
        r["pct"] = p
        rows.append(r)
    return rows


def sec_census(mps: bool) -> dict:
    mech = "mps" if mps else "green"
    shares = ALL_SHARES if mps else GREEN_SHARES
    record_cmd(
        f"{mech}_census",
        f"for p in {shares[0]}..{shares[-1]}: BLESS_LIMIT_PCT=p LD_PRELOAD=shim "
        f"VAI_DEVICE_SM_COUNT={DEVICE_SMS} build/coop_static  (and build/coop_shared)",
    )
    out: dict = {"static": census_rows(shares, mps, "coop_static")}
    out["shared"] = census_rows(
        shares if not mps else list(range(5, 100, 5)) + [1, 2, 98, 99], mps, "coop_shared"
    )
    if mps:
        drv = []
        for p in (1, 2, 3, 4, 25, 50, 75, 98, 99):
            env = base_env(True)
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(p)
            r = run([str(BUILD / "coop_static")], env, label=f"driver/{p}")
            r["pct"] = p
            drv.append(r)
        out["driver_only"] = drv
        out["nvml"] = run(
            [str(BUILD / "coop_static")],
            shim_env(75, True, VAI_DEVICE_SM_COUNT=None),
            label="nvml/75",
        )
    return out


def sec_gemm(mps: bool, workers: int) -> dict:
    mech = "mps" if mps else "green"
    shares = ALL_SHARES if mps else GREEN_SHARES
    jobs = [(p, None) for p in shares] + [
        (p, "granted") for p in ((40, 75, 80) if mps else (40, 75))
    ]
    record_cmd(
        f"{mech}_gemm",
        f"{workers} at a time: BLESS_LIMIT_PCT=p LD_PRELOAD=shim VAI_DEVICE_SM_COUNT="
        f"{DEVICE_SMS} python3 gpu/probes/gemm_check.py check, p in {shares[0]}..{shares[-1]}; "
        "controls with VAI_SM_ATTRIBUTE=granted; then 3 shares again one at a time",
    )

    def one(job: tuple[int, str | None], tag: str) -> dict:
        p, attr = job
        extra = {"VAI_SM_ATTRIBUTE": attr} if attr else {}
        r = run(
            gemm_cmd(),
            shim_env(p, mps, **extra),
            timeout=240,
            label=f"{mech}_gemm/{tag}/{p}/{attr or 'auto'}",
        )
        r["pct"], r["attr"] = p, attr or "auto"
        return r

    with cf.ThreadPoolExecutor(workers) as ex:
        rows = list(ex.map(lambda j: one(j, "concurrent"), jobs))
    alone = [one((p, None), "alone") for p in ((40, 75, 80) if mps else (75,))]
    return {"rows": rows, "alone": alone, "workers": workers}


def sec_repro() -> dict:
    """The same share twice, one process at a time: are the products bitwise reproducible across
    processes at all (the baseline for the concurrent-vs-alone comparison)?"""
    record_cmd(
        "mps_repro", "BLESS_LIMIT_PCT=p gemm_check.py check twice, one at a time, p in 40 75"
    )
    rows = []
    for p in (40, 75):
        for i in (1, 2):
            r = run(gemm_cmd(), shim_env(p, True), timeout=240, label=f"repro/{p}/{i}")
            r.update(pct=p, attr="auto", round=i)
            rows.append(r)
    return {"rows": rows}


def sec_perf(mps: bool) -> dict:
    record_cmd(
        "mps_perf",
        "for round 1 2: for p in 25 50 75: for attr in auto granted: BLESS_LIMIT_PCT=p "
        "[VAI_SM_ATTRIBUTE=granted] PROBE_SECS=2 python3 gpu/probes/gemm_check.py perf",
    )
    rows = []
    for rnd in (1, 2):
        for p in (25, 50, 75):
            for attr in ("auto", "granted"):
                extra = {"PROBE_SECS": "2"}
                if attr == "granted":
                    extra["VAI_SM_ATTRIBUTE"] = "granted"
                r = run(
                    gemm_cmd("perf"),
                    shim_env(p, mps, **extra),
                    timeout=120,
                    label=f"perf/{p}/{attr}/{rnd}",
                )
                r.update(pct=p, attr=attr, round=rnd)
                rows.append(r)
    return {"rows": rows}


def sec_pair() -> dict:
    record_cmd(
        "mps_pair",
        "PROBE_SECS=4 gemm_check.py perf (no shim, MPS); then two at once with "
        "BLESS_LIMIT_PCT=50 VAI_BARRIER_N=2",
    )
    env = base_env(True)
    env["PROBE_SECS"] = "4"
    full = run(gemm_cmd("perf"), env, timeout=120, label="pair/full")
    bar = tempfile.mkdtemp()
    with cf.ThreadPoolExecutor(2) as ex:
        futs = [
            ex.submit(
                run,
                gemm_cmd("perf"),
                shim_env(50, True, PROBE_SECS="4", VAI_BARRIER_DIR=bar, VAI_BARRIER_N="2"),
                120,
                f"pair/50/{i}",
            )
            for i in (1, 2)
        ]
        pair = [f.result() for f in futs]
    shutil.rmtree(bar, ignore_errors=True)
    return {"full": full, "pair": pair}


def sec_launch(mps: bool) -> dict:
    mech = "mps" if mps else "green"
    record_cmd(
        f"{mech}_launch",
        "5 rounds: VAI_WL_LAUNCHES=100000 taskset -c 3 build/workload_c, no shim / "
        "shim BLESS_LIMIT_PCT=50",
    )
    rows = []
    for rnd in range(int(os.environ.get("SWEEP_LAUNCH_ROUNDS", "5"))):
        for setting in ("noshim", "shim50"):
            env = base_env(mps) if setting == "noshim" else shim_env(50, mps)
            env["VAI_WL_LAUNCHES"] = "100000"
            r = run(
                ["taskset", "-c", "3", str(BUILD / "workload_c")],
                env,
                timeout=60,
                label=f"launch/{setting}/{rnd}",
            )
            r.update(setting=setting, round=rnd)
            rows.append(r)
    return {"rows": rows}


def sec_preload(mps: bool) -> dict:
    """The plugin's mounts emulated as files (we are root on the lent machine), restored after."""
    mech = "mps" if mps else "green"
    record_cmd(
        f"{mech}_preload",
        "/etc/ld.so.preload=<shim>, /etc/vai/limits: BLESS_LIMIT_PCT=25 "
        f"VAI_DEVICE_SM_COUNT={DEVICE_SMS}; env LD_PRELOAD={LIBM} BLESS_LIMIT_PCT=100: "
        "coop_static, PROBE_CENSUS=1 gemm_check.py perf; baseline: the shim at 25 the ordinary way",
    )
    out: dict = {}
    out["baseline"] = run(
        gemm_cmd("perf"), shim_env(25, mps, PROBE_SECS="2"), timeout=120, label="preload/baseline25"
    )
    keeper = None
    if mps:  # keep the MPS server alive from before the files exist: it must not load the shim
        kenv = base_env(True)
        kenv["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = "2"
        keeper = subprocess.Popen(
            [PY, "-c", "import torch,time; torch.zeros(1,device='cuda'); time.sleep(120)"], env=kenv
        )
        time.sleep(6)
    saved = {}
    paths = [Path("/etc/ld.so.preload"), Path("/etc/vai/limits")]
    for p in paths:
        saved[p] = p.read_bytes() if p.exists() else None
    try:
        Path("/etc/vai").mkdir(exist_ok=True)
        paths[1].write_text(
            f"# emulated GPU plugin mount\nBLESS_LIMIT_PCT=25\nVAI_DEVICE_SM_COUNT={DEVICE_SMS}\n"
        )
        paths[0].write_text(f"{LIB}\n")
        env = base_env(mps)
        env.update(LD_PRELOAD=LIBM, BLESS_LIMIT_PCT="100", VAI_LOG_LEVEL="info")
        out["coop"] = run([str(BUILD / "coop_static")], env, label="preload/coop")
        env2 = dict(env, PROBE_SECS="2", PROBE_CENSUS="1")
        out["perf"] = run(gemm_cmd("perf"), env2, timeout=120, label="preload/perf")
        env3 = dict(env, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="100")
        out["coop_mps_env_100"] = run(
            [str(BUILD / "coop_static")], env3, label="preload/coop-mpsenv100"
        )
    finally:
        for p in paths:
            if saved[p] is None:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(saved[p])
        if keeper:
            keeper.kill()
            keeper.wait()
    out["restored"] = not Path("/etc/vai/limits").exists() and (
        saved[paths[0]] is not None or not paths[0].exists()
    )
    return out


def sec_quota() -> dict:
    record_cmd(
        "quota",
        "VAI_MEMORY_LIMIT=4Gi BLESS_LIMIT_PCT=50 python3 workloads/workload_d.py --quota with "
        "PYTORCH_CUDA_ALLOC_CONF unset / expandable_segments:True / backend:cudaMallocAsync; "
        "VAI_MEMORY_LIMIT=4Gi build/vmm_loop (and without the shim, MAX_GIB=8)",
    )
    wd = [PY, str(ROOT / "workloads" / "workload_d.py"), "--quota"]
    out = {}
    for name, conf in (
        ("plain", None),
        ("expandable", "expandable_segments:True"),
        ("async", "backend:cudaMallocAsync"),
    ):
        extra = {"VAI_MEMORY_LIMIT": "4Gi"}
        if conf:
            extra["PYTORCH_CUDA_ALLOC_CONF"] = conf
        out[name] = run(wd, shim_env(50, False, **extra), timeout=120, label=f"quota/{name}")
    out["vmm"] = run(
        [str(BUILD / "vmm_loop")], shim_env(50, False, VAI_MEMORY_LIMIT="4Gi"), label="quota/vmm"
    )
    env = base_env(False)
    env["MAX_GIB"] = "8"
    out["vmm_noshim"] = run([str(BUILD / "vmm_loop")], env, label="quota/vmm-noshim")
    return out


SECTIONS = {
    "build": sec_build,
    "env": sec_env,
    "markers": sec_markers,
    "reference": sec_reference,
    "mps_census": lambda: sec_census(True),
    "mps_gemm": lambda: sec_gemm(True, int(os.environ.get("SWEEP_WORKERS", "8"))),
    "mps_perf": lambda: sec_perf(True),
    "mps_repro": sec_repro,
    "mps_pair": sec_pair,
    "mps_launch": lambda: sec_launch(True),
    "mps_preload": lambda: sec_preload(True),
    "green_census": lambda: sec_census(False),
    "green_gemm": lambda: sec_gemm(False, int(os.environ.get("SWEEP_WORKERS", "6"))),
    "green_launch": lambda: sec_launch(False),
    "green_preload": lambda: sec_preload(False),
    "quota": sec_quota,
}
# Rough cost in seconds, to skip what no longer fits the budget.
COST = {
    "build": 60,
    "env": 8,
    "markers": 5,
    "reference": 15,
    "mps_census": 70,
    "mps_gemm": 130,
    "mps_perf": 75,
    "mps_repro": 30,
    "mps_pair": 25,
    "mps_launch": 45,
    "mps_preload": 35,
    "green_census": 25,
    "green_gemm": 45,
    "green_launch": 45,
    "green_preload": 20,
    "quota": 40,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sections", nargs="+", choices=list(SECTIONS))
    ap.add_argument("--budget", type=float, default=560)
    args = ap.parse_args()
    RESULTS["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS["argv"] = sys.argv[1:]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    RESULTS["commit"] = os.environ.get("SWEEP_COMMIT") or commit.stdout.strip()
    if "env" not in args.sections and "build" in args.sections:
        args.sections.insert(args.sections.index("build") + 1, "env")
    mps_up = False
    try:
        for name in args.sections:
            left = args.budget - (time.time() - T0)
            if left < COST[name]:
                RESULTS["sections"][name] = {
                    "skipped": f"{left:.0f}s left of the budget, needs ~{COST[name]}s"
                }
                log(f"skip {name}")
                save()
                continue
            want_mps = name.startswith("mps_")
            if want_mps and not mps_up:
                mps_start()
                mps_up = True
            if not want_mps and mps_up:
                mps_stop()
                mps_up = False
            log(f"section {name}")
            t = time.time()
            try:
                RESULTS["sections"][name] = SECTIONS[name]()
            except Exception as exc:  # one broken section must not lose the others
                RESULTS["sections"][name] = {"error": repr(exc)[:500]}
            RESULTS["sections"][name + "_secs"] = round(time.time() - t, 1)
            save()
    finally:
        if mps_up:
            mps_stop()
        RESULTS["total_secs"] = round(time.time() - T0, 1)
        save()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
