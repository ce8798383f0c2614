"""`keti-ray eval` end to end as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
    f"n{i},32000,131072,{g},T4\n" for i, g in enumerate([1, 2, 4, 8] * 4)
)
PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n" + "".join(
    f"p{i},{1000 + 500 * (i % 5)},2048,{n},{m}\n"
    for i, (n, m) in enumerate([(1, 1000), (1, 500), (0, 0), (1, 250), (2, 1000)] * 12)
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "keti_ray.cli", *args], capture_output=True, text=True, timeout=120
    )


def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "nodes.csv").write_text(NODES)
    (tmp_path / "pods.csv").write_text(PODS)
    return str(tmp_path / "nodes.csv"), str(tmp_path / "pods.csv")


def test_json_output_is_one_object(tmp_path):
    nodes, pods = files(tmp_path)
    proc = run(
        "eval",
        "--nodes",
        nodes,
        "--pods",
        pods,
        "--policy",
        "fgd,random",
        "--seeds",
        "1-3",
        "--json",
        "--plot",
        str(tmp_path / "curves.png"),
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["seeds"] == [1, 2, 3] and payload["tune"] == 1.3
    for policy in ("fgd", "random"):
        row = payload["results"][policy]
        assert set(row["unallocated_gpu_pct"]) == {"100", "110", "120", "130"}
        assert len(row["per_seed_130"]) == 3
        assert 0 <= row["frag_pct_130"] <= 100 and row["seconds_per_replay"] > 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_table_output_and_workers(tmp_path):
    nodes, pods = files(tmp_path)
    proc = run(
        "eval",
        "--nodes",
        nodes,
        "--pods",
        pods,
        "--policy",
        "bestfit",
        "--seeds",
        "1,2",
        "--workers",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "bestfit" in proc.stdout and "130%" in proc.stdout


def test_bad_arguments_are_named(tmp_path):
    nodes, pods = files(tmp_path)
    proc = run("eval", "--nodes", nodes, "--pods", pods, "--seeds", "9-3")
    assert proc.returncode == 2 and "--seeds" in proc.stderr
    proc = run("eval", "--nodes", nodes, "--pods", pods, "--policy", "nope")
    assert proc.returncode == 2 and "'nope' is unknown" in proc.stderr
    (tmp_path / "bad.csv").write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\nx,1,1,1,2000\n")
    proc = run("eval", "--nodes", nodes, "--pods", str(tmp_path / "bad.csv"))
    assert proc.returncode == 2 and "line 2" in proc.stderr and "gpu_milli" in proc.stderr
