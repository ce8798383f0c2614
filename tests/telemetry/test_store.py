"""Telemetry store: Parquet layout, validation, and no acknowledged row lost to a crash."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
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


def test_torn_tail_then_more_rows_then_restart_keeps_every_acknowledged_row(tmp_path):
    store = TelemetryStore(tmp_path)
    store.push("samples", [sample(1.0 + i) for i in range(5)])
    with store.current.open("ab") as handle:  # a crash in the middle of writing a record
        handle.write(b'8badf00d {"k":"samples","r":{"time": 9')
    store = TelemetryStore(tmp_path)  # restart: the torn record is cut off
    store.push("samples", [sample(100.0 + i) for i in range(3)])  # acknowledged after it
    times = TelemetryStore(tmp_path).read("samples")["time"].to_pylist()
    assert sorted(times) == [1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 101.0, 102.0]


def test_a_damaged_middle_record_loses_only_itself(tmp_path):
    store = TelemetryStore(tmp_path)
    for i in range(6):
        store.push("samples", [sample(float(i))])
    lines = store.current.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"time":2.0', b'"time":7.0')  # bit rot: CRC no longer fits
    lines[3] = b"\xff\xfe garbage"
    store.current.write_bytes(b"\n".join(lines))
    reopened = TelemetryStore(tmp_path)
    assert reopened.read("samples")["time"].to_pylist() == [0.0, 1.0, 4.0, 5.0]
    assert reopened.bad_records >= 2
    reopened.push("samples", [sample(6.0)])
    assert reopened.flush() == 5  # the damaged records are dropped, the rest moves to Parquet
    assert TelemetryStore(tmp_path).read("samples")["time"].to_pylist() == [0.0, 1.0, 4.0, 5.0, 6.0]


def test_small_files_are_compacted_and_a_crash_mid_compaction_is_finished(tmp_path):
    store = TelemetryStore(tmp_path, compact_files=4)
    for i in range(3):
        store.push("samples", [sample(10.0 + i)])
        store.flush()
    folder = next(tmp_path.glob("samples/date=*/node=*"))
    assert len(list(folder.glob("part-*.parquet"))) == 3
    store.push("samples", [sample(13.0)])
    store.flush()  # the 4th file: merged into one
    assert len(list(folder.glob("part-*.parquet"))) == 1
    assert store.read("samples")["time"].to_pylist() == [10.0, 11.0, 12.0, 13.0]
    # A compaction that died after the merged file appeared, before the sources went away.
    for i in range(3):
        store.push("samples", [sample(20.0 + i)])
        store.flush()
    files = sorted(folder.glob("part-*.parquet"))
    target = folder / "part-c-crashed.parquet"
    from keti_ray.telemetry.schema import SAMPLES

    pq.write_table(pa.concat_tables([pq.read_table(f, schema=SAMPLES) for f in files]), target)
    plan = {"target": target.name, "tmp": ".x.tmp", "sources": [f.name for f in files]}
    (folder / ".compact-crashed.json").write_text(json.dumps(plan))
    assert store.count("samples") == 7  # readers already skip the merged sources
    reopened = TelemetryStore(tmp_path, compact_files=4)
    assert sorted(folder.glob("part-*.parquet")) == [target]
    assert sorted(reopened.read("samples")["time"].to_pylist()) == [
        10.0,
        11.0,
        12.0,
        13.0,
        20.0,
        21.0,
        22.0,
    ]


def test_allocator_events_go_through_a_bounded_queue_that_drops_and_counts(tmp_path):
    import threading

    from keti_ray.booking import AllocationService
    from keti_ray.simcluster import simulated_nodes

    from ..factories import pod

    store = TelemetryStore(tmp_path, writer="allocator")
    gate = threading.Event()
    real_push = store.push
    store.push = lambda kind, rows: (gate.wait(30), real_push(kind, rows))[1]  # a slow disk
    service = AllocationService(simulated_nodes(2), telemetry=store)
    service.events.queue.maxsize = 5
    start = time.perf_counter()
    for i in range(40):
        service.allocate(pod(f"p{i}", num=1, milli=100))
    assert time.perf_counter() - start < 5  # the requests never waited for the disk
    text = service.metrics_text().decode()
    dropped = float(re.search(r"^keti_allocator_telemetry_dropped_total (\S+)$", text, re.M)[1])
    assert dropped >= 20  # at most 5 queued plus the few the writer took before it blocked
    gate.set()
    service.push_events()
    assert store.count("events") == 40 - dropped
    service.close()
