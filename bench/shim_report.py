"""Checks the shim's GPU acceptance figures (issue 11) and writes bench/results/shim_gpu.json.

The figures come from `native/vai_accelerator/gpu/sweep.py` runs on the lent H200, kept as
native/vai_accelerator/gpu/results/sweep_*.json (one per device call). This script only reads
them; re-running the GPU part needs the device (tests/native/test_gpu_sweep.py does both).

    python bench/shim_report.py [--results DIR] [--files NAME ...] [--out FILE]

--files names the sweep files in DIR, merged in order (a later file wins a section); the default
is the issue-11 calls 2 and 3 (sweep_final.json, sweep_final_launch.json). The re-run on the
per-stream-FIFO shim (from the repository root):

    python bench/shim_report.py --files sweep_fifo.json sweep_fifo2.json
                                --out bench/results/shim_gpu_fifo.json

A check that needs a section none of the files has is listed with "pass": null and "result":
"not re-run" (and the report counts them in "not_re_run").

Every check compares figures measured in the same run (the same share with and without an
option, one full process against two halves, no shim against the shim); the SM counts are
compared with keti_ray.shares.granted_sms where that module exists (else the shim's own rule).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "native" / "vai_accelerator" / "gpu" / "results"
DEFAULT_FILES = ["sweep_final.json", "sweep_final_launch.json"]
DEFAULT_OUT = ROOT / "bench" / "results" / "shim_gpu.json"
NOT_RERUN = "not re-run"
# Earlier figures (native/vai_accelerator/RESULTS.md, issue 3): launch rate, shim 50 / no shim.
EARLIER_LAUNCH_RATIO = {"mps": 1.004, "green": 0.946}


try:
    from keti_ray.shares import MIN_SHARE_PCT
except ImportError:
    MIN_SHARE_PCT = 1


def granted_sms(pct: int, device_sms: int, mechanism: str) -> int:
    """The shares module's answer, or (before it lands on this branch) the shim's own rule."""
    try:
        from keti_ray.shares import Mechanism
        from keti_ray.shares import granted_sms as gs

        return gs(pct, device_sms, Mechanism(mechanism))
    except ImportError:
        exact = device_sms * pct // 100
        if mechanism == "mps":
            return min(device_sms, max(8, exact // 2 * 2))  # measured: MPS never below 8
        return max(8, exact // 8 * 8)


def load(results: Path, names: list[str] | None = None) -> dict[str, dict]:
    """{section: rows} merged over the named files in results, else every sweep_*.json there
    (a later file wins a section)."""
    merged: dict[str, dict] = {"_meta": {}}
    paths = [results / n for n in names] if names else sorted(results.glob("sweep_*.json"))
    for path in paths:
        data = json.loads(path.read_text())
        merged["_meta"][path.name] = {
            k: data.get(k) for k in ("commit", "started", "argv", "total_secs")
        }
        merged["_meta"][path.name]["commands"] = data.get("commands", [])
        for name, sec in data.get("sections", {}).items():
            if isinstance(sec, dict) and "skipped" not in sec and "error" not in sec:
                merged[name] = sec
    return merged


def check(name: str, ok: bool, **figures: Any) -> dict[str, Any]:
    return {"check": name, "pass": bool(ok), **figures}


def not_rerun(c: dict[str, Any], sections: list[str], **figures: Any) -> dict[str, Any]:
    """A check that cannot be decided: the sections it needs are in none of the files."""
    return {**c, "pass": None, "result": NOT_RERUN, "sections_not_re_run": sections, **figures}


def res(row: dict | None) -> dict:
    return (row or {}).get("result") or {}


def census(sec: dict, mech: str, device_sms: int) -> list[dict]:
    out = []
    for kind in ("static", "shared"):
        bad, table = [], []
        for row in sec.get(kind, []):
            p, r, st = row["pct"], res(row), row.get("status", {})
            want = granted_sms(p, device_sms, mech)
            coop_ok = (
                r.get("coop_launch") == "cudaSuccess"
                and r.get("coop_sync") == "cudaSuccess"
                and r.get("coop_count") == r.get("coop_expect")
            )
            cells = {
                "pct": p,
                "told": r.get("told"),
                "census": r.get("census"),
                "granted": st.get("sms_granted"),
                "predicted": want,
                "coop": coop_ok,
            }
            table.append(cells)
            if not (r.get("told") == r.get("census") == st.get("sms_granted") and coop_ok):
                bad.append(cells)
        out.append(
            check(
                f"{mech}: every share: the SMs the process is told = its SM census = the status "
                f"line's sms_granted, and coop.cu launches and completes ({kind} CUDA runtime)",
                bool(table) and not bad,
                shares=len(table),
                mismatches=bad[:20],
                table=table,
            )
        )
    if sec.get("static") or not sec:
        rows = [c for c in out[0]["table"] if c["pct"] >= MIN_SHARE_PCT]
        off = [c for c in rows if c["census"] != c["predicted"]]
        out.append(
            check(
                f"{mech}: the SM census equals keti_ray.shares.granted_sms at every share it books "
                f"(>= {MIN_SHARE_PCT}%)",
                bool(rows) and not off,
                shares=len(rows),
                mismatches=[{k: c[k] for k in ("pct", "census", "predicted")} for c in off],
            )
        )
    return out


def not_reproducible(repro: dict | None) -> set[str] | None:
    """Cases whose products differ between two processes of the same share run one at a time
    (None: mps_repro was not run)."""
    if repro is None:
        return None
    by: dict[int, list[dict]] = {}
    for r in repro.get("rows", []):
        by.setdefault(r["pct"], []).append(res(r).get("cases", {}))
    out = set()
    for runs in by.values():
        if len(runs) == 2:
            out |= {k for k, v in runs[0].items() if runs[1].get(k, {}).get("fp") != v.get("fp")}
    return out


def gemm(sec: dict, mech: str, nonrepro: set[str] | None = frozenset()) -> list[dict]:
    rows = sec.get("rows", [])
    auto = [r for r in rows if r["attr"] == "auto"]
    wrong = [
        {"pct": r["pct"], "wrong": res(r).get("wrong"), "rc": r["rc"]}
        for r in auto
        if res(r).get("wrong") != [] or "cases" not in res(r)
    ]
    worst = max((res(r).get("worst", 9) for r in auto), default=None)
    n_cases = sum(len(res(r).get("cases", {})) for r in auto)
    out = [
        check(
            f"{mech}: zero wrong GEMMs (bf16/fp16/fp32, cuBLAS and cuBLASLt, 1024-4096 and "
            "3000x5000x1500) and nn.Linear at every share",
            bool(auto) and not wrong,
            shares=len(auto),
            cases_checked=n_cases,
            worst_rel_err=worst,
            failures=wrong[:20],
        )
    ]
    controls = [r for r in rows if r["attr"] == "granted"]
    if controls or not sec:
        out.append(
            check(
                f"{mech}: control: told the share (VAI_SM_ATTRIBUTE=granted) the same checks find "
                "wrong products at the known-bad shares (the check can fail)",
                all(res(r).get("wrong") for r in controls)
                if mech == "mps"
                else any(res(r).get("wrong") for r in controls),
                controls={r["pct"]: res(r).get("wrong") for r in controls},
            )
        )
    conc = {r["pct"]: res(r).get("cases", {}) for r in auto}
    same, same_err, diffs, undecided = 0, 0, [], []
    for r in sec.get("alone", []):
        a, c = res(r).get("cases", {}), conc.get(r["pct"], {})
        for k, v in a.items():
            if k in c and c[k].get("fp") == v.get("fp"):
                same += 1
            elif k in c and (nonrepro is None or k in nonrepro) and c[k].get("err") == v.get("err"):
                same_err += 1  # not bitwise reproducible between processes at all: same error
                if nonrepro is None:  # whether two lone runs differ too was not measured
                    undecided.append(f"{r['pct']}:{k}")
            else:
                diffs.append(f"{r['pct']}:{k}")
    if sec.get("alone") or not sec:
        alone = check(
            f"{mech}: running {sec.get('workers', 'N')} shares at once changes no result: the same "
            "shares run alone give bit-identical products (fingerprints), or the same error "
            "where two lone runs differ in bits too",
            same > 0 and not diffs,
            identical=same,
            same_error_not_bitwise_reproducible=same_err,
            not_reproducible_between_processes=sorted(nonrepro or ()),
            different=diffs[:10],
        )
        if undecided and not diffs:
            alone = not_rerun(alone, ["mps_repro"], same_error_bits_differ=undecided)
        out.append(alone)
    return out


def perf(sec: dict) -> list[dict]:
    out = []
    for p in (25, 50, 75):
        by = {
            a: [
                res(r).get("tflops")
                for r in sec.get("rows", [])
                if r["pct"] == p and r["attr"] == a
            ]
            for a in ("auto", "granted")
        }
        ok = all(v and all(x for x in v) for v in by.values())
        ratio = statistics.mean(by["auto"]) / statistics.mean(by["granted"]) if ok else None
        out.append(
            check(
                f"MPS {p}%: bf16 8192^3 throughput, default (cuBLAS told the device's SMs) within "
                "2% of VAI_SM_ATTRIBUTE=granted",
                ratio is not None and 0.98 <= ratio <= 1.02,
                tflops_auto=by["auto"],
                tflops_granted=by["granted"],
                ratio=round(ratio, 4) if ratio else None,
            )
        )
    return out


def pair(sec: dict) -> list[dict]:
    full = res(sec.get("full")).get("tflops")
    two = [res(r).get("tflops") for r in sec.get("pair", [])]
    ok = full and len(two) == 2 and all(two)
    return [
        check(
            "MPS: two processes at 50% at once: together >= 90% of one full process, each >= 45%",
            bool(ok) and sum(two) >= 0.9 * full and min(two) >= 0.45 * full,
            full=full,
            each=two,
            together_ratio=round(sum(two) / full, 4) if ok else None,
            windows=[res(r).get("window") for r in sec.get("pair", [])],
        )
    ]


def launch(sec: dict, mech: str) -> list[dict]:
    by: dict[str, list[float]] = {}
    for r in sec.get("rows", []):
        v = res(r).get("launch_rate_best")
        if v:
            by.setdefault(r["setting"], []).append(v)
    ok = by.get("noshim") and by.get("shim50")
    ratio = statistics.median(by["shim50"]) / statistics.median(by["noshim"]) if ok else None
    earlier = EARLIER_LAUNCH_RATIO[mech]
    return [
        check(
            f"{mech}: empty-kernel launch rate under the shim (50%) does not regress against the "
            f"earlier figure ({earlier} of no shim)",
            ratio is not None and ratio >= earlier - 0.02,
            median_noshim=statistics.median(by["noshim"]) if ok else None,
            median_shim50=statistics.median(by["shim50"]) if ok else None,
            ratio=round(ratio, 4) if ratio else None,
            earlier_ratio=earlier,
            rounds=len(by.get("shim50", [])),
        )
    ]


def preload(sec: dict, mech: str, device_sms: int) -> list[dict]:
    want = granted_sms(25, device_sms, mech)
    c, p, b = res(sec.get("coop")), res(sec.get("perf")), res(sec.get("baseline"))
    ratio = p.get("tflops", 0) / b["tflops"] if b.get("tflops") else None
    st = sec.get("perf", {}).get("status", {})
    return [
        check(
            f"{mech}: LD_PRELOAD=libm + BLESS_LIMIT_PCT=100 in the env, /etc/ld.so.preload and "
            "/etc/vai/limits (25%) as the plugin mounts them: the process still gets its share",
            c.get("told") == c.get("census") == want
            and p.get("sms_seen") == want
            and ratio is not None
            and 0.95 <= ratio <= 1.05
            and st.get("limit_pct") == 25,
            told=c.get("told"),
            census=c.get("census"),
            torch_census=p.get("sms_seen"),
            predicted=want,
            tflops=p.get("tflops"),
            baseline_tflops_shim25=b.get("tflops"),
            ratio=round(ratio, 4) if ratio else None,
            status_limits_file=st.get("limits_file"),
            mps_env_100_told=res(sec.get("coop_mps_env_100")).get("told"),
            restored=sec.get("restored"),
        )
    ]


def quota(sec: dict) -> list[dict]:
    lim = 4 << 30
    out = []
    for name in ("plain", "expandable", "async"):
        r = res(sec.get(name))
        got = r.get("allocated_before_oom")
        out.append(
            check(
                f"quota 4Gi: PyTorch's {name} allocator stops at the quota with OutOfMemoryError",
                got is not None and lim - (512 << 20) <= got <= lim and bool(r.get("oom")),
                allocated=got,
                mem_get_info_total=r.get("mem_get_info_total"),
                oom=r.get("oom"),
            )
        )
    v, n = res(sec.get("vmm")), res(sec.get("vmm_noshim"))
    out.append(
        check(
            "quota 4Gi: cuMemCreate/cuMemMap/cuMemRelease loop stops at the quota (without the "
            "shim the same loop maps 8 GiB)",
            v.get("mapped", lim + 1) <= lim
            and v.get("mapped", 0) >= lim - (512 << 20)
            and v.get("stopped_at") == "cuMemCreate"
            and n.get("mapped") == 8 << 30,
            mapped=v.get("mapped"),
            stopped_at=v.get("stopped_at"),
            noshim_mapped=n.get("mapped"),
        )
    )
    return out


def nvml(sec: dict, dev: int) -> list[dict]:
    st = sec.get("nvml", {}).get("status", {})
    return [
        check(
            "MPS: without VAI_DEVICE_SM_COUNT the shim learns the device's SM count from NVML",
            st.get("sms_device") == dev and st.get("sms_device_source") == "nvml",
            status=sec.get("nvml", {}).get("status"),
        )
    ]


def evaluate(data: dict) -> list[dict]:
    dev = (data.get("env") or {}).get("device_sms") or 132
    nonrepro = not_reproducible(data.get("mps_repro"))
    sections = {
        "mps_census": lambda s: census(s, "mps", dev) + nvml(s, dev),
        "mps_gemm": lambda s: gemm(s, "mps", nonrepro),
        "mps_perf": perf,
        "mps_pair": pair,
        "mps_launch": lambda s: launch(s, "mps"),
        "mps_preload": lambda s: preload(s, "mps", dev),
        "green_census": lambda s: census(s, "green", dev),
        "green_gemm": lambda s: gemm(s, "green", nonrepro),
        "green_launch": lambda s: launch(s, "green"),
        "green_preload": lambda s: preload(s, "green", dev),
        "quota": quota,
    }
    checks: list[dict] = []
    for name, derive in sections.items():
        if name in data:
            checks += derive(data[name])
        else:  # the same checks on no figures, marked: their names, not a verdict
            checks += [not_rerun(c, [name]) for c in derive({})]
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--files", nargs="+", default=DEFAULT_FILES, metavar="NAME")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    data = load(args.results, args.files)
    checks = evaluate(data)
    counts = {
        "passed": sum(c["pass"] is True for c in checks),
        "failed": sum(c["pass"] is False for c in checks),
        "not_re_run": sum(c["pass"] is None for c in checks),
    }
    if not counts["not_re_run"]:
        del counts["not_re_run"]  # (the key is new; reports without such checks stay as they were)
    report = {
        "source": str(args.results.relative_to(ROOT))
        if args.results.is_relative_to(ROOT)
        else str(args.results),
        "runs": data["_meta"],
        "env": data.get("env"),
        "markers": data.get("markers"),
        **counts,
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for c in checks:
        figs = {k: v for k, v in c.items() if k not in ("check", "pass", "table")}
        verdict = {True: "PASS", False: "FAIL", None: "NOT RE-RUN"}[c["pass"]]
        print(f"{verdict}  {c['check']}\n      {json.dumps(figs)[:400]}")
    summary = f"{counts['passed']} passed, {counts['failed']} failed"
    if "not_re_run" in counts:
        summary += f", {counts['not_re_run']} {NOT_RERUN}"
    print(summary, "->", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
