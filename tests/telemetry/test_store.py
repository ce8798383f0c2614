"""Telemetry store: Parquet layout, validation, and no acknowledged row lost to a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest

from keti_ray.telemetry import SCHEMA_VERSION, TelemetryError, TelemetryStore


def sample(t: float, node: str = "n0", **extra) -> dict:
    return {"time": t, "node": node, "gpu_uuid": "GPU-1", "sm_pct_granted": 50.0, **extra}


def test_push_flush_read_partitions(tmp_path):
    store = TelemetryStore(tmp_path)
    day = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert store.push("samples", [sample(day + i, node=f"n/{i % 2}") for i in range(10)]) == 10
    assert store.count("samples") == 10  # readable before the flush
    assert store.flush() == 10
    files = sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("samples/**/*.parquet")
    )
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "samples/date=2026-01-01/node=n%2F0",
        "samples/date=2026-01-01/node=n%2F1",
    ]
    meta = pq.read_schema(tmp_path / files[0]).metadata
    assert meta[b"keti_ray.schema_version"] == str(SCHEMA_VERSION).encode()
    table = store.read("samples", since=day + 5)
    assert table.num_rows == 5 and set(table["node"].to_pylist()) == {"n/0", "n/1"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"node": "n", "gpu_uuid": "g"}, "field 'time' is required"),
        (sample(1.0, sm_pct_granted=150.0), "sm_pct_granted"),
        (sample(1.0, sm_util_pct="high"), "sm_util_pct"),
        (sample(1.0, colour="red"), "unknown field"),
    ],
)
def test_bad_rows_are_refused_whole(tmp_path, row, message):
    store = TelemetryStore(tmp_path)
    with pytest.raises(TelemetryError, match=message):
        store.push("samples", [sample(1.0), row])
    assert store.count("samples") == 0
    with pytest.raises(TelemetryError, match="kind 'logs' is unknown"):
        store.push("logs", [{}])


def test_events_ops_are_checked(tmp_path):
    store = TelemetryStore(tmp_path)
    ok = {"time": 1.0, "node": "n", "op": "allocate", "pod": "p", "num_gpu": 1, "gpu_milli": 250}
    store.push("events", [ok])
    with pytest.raises(TelemetryError, match="field 'op' must be one of"):
        store.push("events", [{**ok, "op": "evict"}])


WRITER = textwrap.dedent(
    """
    import sys, time
    from keti_ray.telemetry import TelemetryStore
    store = TelemetryStore(sys.argv[1], flush_rows=37)
    i = 0
    while True:
        n = store.push("samples", [{"time": 1.0e9 + i + k, "node": f"n{k % 3}", "gpu_uuid": "g"}
                                   for k in range(5)])
        i += n
        print(i, flush=True)   # acknowledged so far
    """
)


def test_killed_writer_loses_no_acknowledged_row(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    acked = 0
    deadline = time.time() + 60
    while acked < 400 and time.time() < deadline:
        line = proc.stdout.readline()
        if line:
            acked = int(line)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: somewhere in a push or a flush
    proc.wait()
    rest = proc.stdout.read().split()
    acked = max([acked, *map(int, rest)])
    assert acked >= 400
    store = TelemetryStore(tmp_path)  # restart: finishes any interrupted flush
    times = store.read("samples")["time"].to_pylist()
    assert len(times) == len(set(times)), "a row was written twice"
    assert acked <= len(times) <= acked + 5  # at most the one unacknowledged batch extra
    store.flush()
    assert TelemetryStore(tmp_path).count("samples") == len(times)
