"""The booking store on real SQLite files: durability, idempotence, faults, node-list changes.

Faults injected here and what they cover:
- a process SIGKILLed mid-stream, then a torn (partial) frame appended to the WAL: a crash
  during the write of an unacknowledged commit;
- a full database from SQLite itself (`PRAGMA max_page_count`, SQLITE_FULL: the code SQLite
  returns on ENOSPC) and an I/O error raised at COMMIT by the store's one commit call (an
  EIO from fsync reaches us the same way, as sqlite3.OperationalError "disk I/O error");
- a garbled row and garbled pages in the database file.
Not covered: a disk that lies about fsync, or a real ENOSPC from the kernel (no loop device).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from keti_ray.booking import (
    AllocationService,
    BookingStore,
    Conflict,
    NoFit,
    PolicySpec,
    StoreError,
    StoreUnavailable,
)
from keti_ray.booking.store import LEGACY_SUFFIX, SCHEMA_VERSION
from keti_ray.cluster import NodeSpec
from keti_ray.simcluster import simulated_nodes

from ..factories import pod


def gpu_totals(service: AllocationService) -> dict[str, int]:
    """Booked milli per GPU UUID, from the facade's bookings (what a client sees)."""
    out: dict[str, int] = {}
    for b in service.bookings():
        for g in b["gpus"]:
            out[g["uuid"]] = out.get(g["uuid"], 0) + g["milli"]
    return out


def test_bookings_survive_a_restart_by_name_and_uuid(tmp_path):
    db = tmp_path / "state.db"
    first = AllocationService(simulated_nodes(3), state=db)
    decisions = [first.allocate(pod(f"p{i}", num=1, milli=300)) for i in range(5)]
    whole = first.allocate(pod("whole", num=2, milli=1000), uid="uid-1")
    first.close()
    again = AllocationService(simulated_nodes(3), state=db)
    by_pod = {b["pod"]: b for b in again.bookings()}
    assert set(by_pod) == {f"default/p{i}" for i in range(5)} | {"default/whole"}
    for d in decisions:
        assert by_pod[d.pod]["node"] == d.node
        assert [g["uuid"] for g in by_pod[d.pod]["gpus"]] == [g["uuid"] for g in d.gpus]
    assert by_pod["default/whole"]["uid"] == "uid-1"
    assert by_pod["default/whole"]["milli"] == [1000, 1000]
    assert (again.state.gpu_free == first.state.gpu_free).all()
    with sqlite3.connect(db) as conn:  # what is on disk: names and UUIDs, no indices
        row = conn.execute("SELECT node, gpus FROM bookings WHERE pod='default/whole'").fetchone()
        assert row[0] == whole.node and "GPU-" in row[1] and '"index"' not in row[1]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_allocate_is_idempotent_and_conflicts_name_the_pod(tmp_path):
    service = AllocationService(simulated_nodes(2), state=tmp_path / "s.db")
    first = service.allocate(pod("a", num=1, milli=250), uid="u1")
    again = service.allocate(pod("a", num=1, milli=250), uid="u1")
    assert again.existing and (again.node, again.gpus) == (first.node, first.gpus)
    assert service.allocate(pod("default/a", num=1, milli=250)).existing  # same identity
    with pytest.raises(Conflict, match="pod 'default/a' is booked already .*gpu_milli"):
        service.allocate(pod("a", num=1, milli=500))
    with pytest.raises(Conflict, match="another pod UID"):
        service.allocate(pod("a", num=1, milli=250), uid="u2")
    assert len(service.bookings()) == 1 and gpu_totals(service)[first.gpus[0]["uuid"]] == 250
    assert service.release("a", uid="u2") is False  # another incarnation: not released
    assert service.release("default/a") is True and service.bookings() == []


def test_a_batch_is_one_commit_with_a_savepoint_per_pod(tmp_path):
    service = AllocationService(simulated_nodes(1), state=tmp_path / "s.db")
    commits = []
    real = service.store._commit
    service.store._commit = lambda: (commits.append(1), real())[1]
    calls = [(pod(f"b{i}", num=1, milli=500), False) for i in range(20)]  # 8 GPUs: 16 fit
    results = service.decide_many(calls)
    assert [r["status"] for r in results] == [200] * 16 + [409] * 4
    assert len(commits) == 1
    assert len(AllocationService(simulated_nodes(1), state=tmp_path / "s.db").bookings()) == 16


def test_io_error_at_commit_books_nothing_and_the_next_request_works(tmp_path):
    db = tmp_path / "s.db"
    service = AllocationService(simulated_nodes(2), state=db)
    service.allocate(pod("before", num=1, milli=300))
    partition = service.partition()
    real = service.store._commit

    def failing_commit():
        raise sqlite3.OperationalError("disk I/O error")

    service.store._commit = failing_commit
    results = service.decide_many([(pod(f"x{i}", num=1, milli=200), False) for i in range(3)])
    assert [r["status"] for r in results] == [503] * 3
    assert all("nothing was booked" in r["error"] for r in results)
    with pytest.raises(StoreUnavailable):
        service.allocate(pod("single", num=1, milli=200))
    assert service.partition() == partition  # memory undone as well
    assert 'keti_allocator_store_errors_total{op="commit"} 2.0' in service.metrics_text().decode()
    service.store._commit = real
    assert service.allocate(pod("x0", num=1, milli=200)).existing is False  # works again
    keys = {b["pod"] for b in AllocationService(simulated_nodes(2), state=db).bookings()}
    assert keys == {"default/before", "default/x0"}


def test_full_database_refuses_with_503_and_recovers(tmp_path):
    """SQLITE_FULL from SQLite itself: the database may not grow past max_page_count."""
    db = tmp_path / "s.db"
    service = AllocationService([NodeSpec("big", 10**8, 10**9, 0)], state=db)
    pages = service.store.conn.execute("PRAGMA page_count").fetchone()[0]
    service.store.conn.execute(f"PRAGMA max_page_count = {pages}")
    statuses = []
    for i in range(400):
        r = service.decide_many([(pod(f"fill-{i:04d}-" + "x" * 200, cpu=1, mem=1), False)])[0]
        statuses.append(r["status"])
        if r["status"] == 503:
            assert "full" in r["error"]
            failed = r["pod"]
            break
    else:
        pytest.fail("the database never filled up")
    assert failed not in {b["pod"] for b in service.bookings()}
    service.store.conn.execute(f"PRAGMA max_page_count = {pages * 100}")
    assert service.decide_many([(pod("after", cpu=1, mem=1), False)])[0]["status"] == 200
    kept = {
        b["pod"] for b in AllocationService([NodeSpec("big", 10**8, 10**9, 0)], state=db).bookings()
    }
    assert failed not in kept and "default/after" in kept
    assert len(kept) == statuses.count(200) + 1


WRITER = textwrap.dedent(
    """
    import sys
    from keti_ray.booking import AllocationService
    from keti_ray.cluster import PodRequest
    from keti_ray.simcluster import simulated_nodes
    service = AllocationService(simulated_nodes(3), state=sys.argv[1])
    start = int(sys.argv[2])
    for i in range(start, start + 100000):
        gpu = (1, 100) if i % 3 == 0 else (0, 0)
        r = service.decide_many([(PodRequest(f"w{i}", 10, 10, *gpu), False)])[0]
        if r["status"] == 200:
            print(r["pod"], flush=True)   # acknowledged
    """
)


def run_writer_until(db, start: int, acks: int) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(start)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    acked: list[str] = []
    deadline = time.time() + 60
    while len(acked) < acks and time.time() < deadline:
        line = proc.stdout.readline()
        if line:
            acked.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += proc.stdout.read().split()  # printed before the kill landed
    return acked


def test_torn_write_then_more_bookings_then_restart(tmp_path):
    db = tmp_path / "s.db"
    acked = run_writer_until(db, 0, 150)
    wal = db.with_name(db.name + "-wal")
    assert wal.exists()
    with wal.open("ab") as handle:  # a commit torn mid-write by the crash: half a frame
        handle.write(os.urandom(2000))
    acked += run_writer_until(db, 100000, 100)  # more bookings on top of the torn tail
    service = AllocationService(simulated_nodes(3), state=db)
    kept = {b["pod"] for b in service.bookings()}
    assert set(acked) <= kept, f"lost {sorted(set(acked) - kept)[:5]}"
    assert len(kept) <= len(set(acked)) + 2  # at most each killed writer's unprinted one
    assert all(total <= 1000 for total in gpu_totals(service).values())
    assert service.health()["set_aside"]["count"] == 0


def test_garbled_row_is_set_aside_and_reported(tmp_path, caplog):
    db = tmp_path / "s.db"
    first = AllocationService(simulated_nodes(2), state=db)
    first.allocate(pod("good", num=1, milli=500))
    first.allocate(pod("bad", num=1, milli=500))
    first.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE bookings SET gpus = '[{\"uu' WHERE pod = 'default/bad'")
    service = AllocationService(simulated_nodes(2), state=db)
    assert [b["pod"] for b in service.bookings()] == ["default/good"]
    health = service.health()["set_aside"]
    assert health["count"] == 1 and health["bookings"][0]["pod"] == "default/bad"
    assert "unreadable row" in health["bookings"][0]["reason"]
    assert "keti_allocator_set_aside_bookings 1.0" in service.metrics_text().decode()


@pytest.mark.parametrize("damage", ["garbage-file", "garbled-pages"])
def test_unreadable_database_stops_with_the_file_and_the_problem(tmp_path, damage):
    db = tmp_path / "s.db"
    if damage == "garbage-file":
        db.write_bytes(b"\x00\x01 not a database " * 300)
    else:
        service = AllocationService([NodeSpec("n", 10**8, 10**9, 0)], state=db)
        service.decide_many([(pod(f"p{i}" + "y" * 100, cpu=1, mem=1), False) for i in range(300)])
        service.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        service.close()
        data = bytearray(db.read_bytes())
        assert len(data) > 4 * 4096
        data[2 * 4096 : 3 * 4096] = os.urandom(4096)  # a page in the middle
        db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        AllocationService([NodeSpec("n", 10**8, 10**9, 0)], state=db)
    assert str(db) in str(info.value) and "cannot be read" in str(info.value)


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "s.db"
    BookingStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this keti-ray"):
        BookingStore(db)


def test_changed_node_list_sets_bookings_aside_and_comes_up(tmp_path, caplog):
    db = tmp_path / "s.db"
    first = AllocationService(simulated_nodes(3), state=db)
    placed = {}
    for name, num, milli in [("big", 8, 1000), ("mid", 4, 1000), ("t4", 1, 500)]:
        placed[name] = first.allocate(pod(name, num=num, milli=milli)).node
    assert placed == {"big": "sim-node-00", "mid": "sim-node-01", "t4": "sim-node-02"}
    first.close()
    # Next run: node 01 is gone, node 02 came back with other GPUs (new UUIDs).
    nodes = [n for n in simulated_nodes(3) if n.name != "sim-node-01"]
    uuids = {"sim-node-02": ["GPU-new-0", "GPU-new-1"]}
    with caplog.at_level("WARNING", logger="keti_ray.booking"):
        service = AllocationService(nodes, state=db, gpu_uuids=uuids)
    assert [b["pod"] for b in service.bookings()] == ["default/big"]
    reasons = {s["pod"]: s["reason"] for s in service.health()["set_aside"]["bookings"]}
    assert "no longer in the node list" in reasons["default/mid"]
    assert "is no longer on node 'sim-node-02'" in reasons["default/t4"]
    assert "default/mid" in caplog.text and "set aside" in caplog.text
    assert "keti_allocator_set_aside_bookings 2.0" in service.metrics_text().decode()
    # The freed capacity is usable; a set-aside pod can be booked again, or released.
    assert service.allocate(pod("t4", num=1, milli=500)).node == "sim-node-02"
    assert service.release("mid") is True
    assert service.health()["set_aside"]["count"] == 0
    # The facade's replace_nodes does the same at run time.
    report = service.replace_nodes(simulated_nodes(1))
    assert [s["pod"] for s in report["set_aside"]] == ["default/t4"] and report["kept"] == 1


def test_old_journal_is_imported_once(tmp_path):
    journal = tmp_path / "journal.jsonl"
    lines = [
        {
            "op": "allocate",
            "pod": {
                "name": "a",
                "cpu_milli": 1,
                "memory_mib": 1,
                "num_gpu": 1,
                "gpu_milli": 300,
                "gpu_spec": [],
            },
            "placement": {"node": 1, "gpus": [2], "milli": [300]},
        },
        {
            "op": "allocate",
            "pod": {
                "name": "ml/b",
                "cpu_milli": 1,
                "memory_mib": 1,
                "num_gpu": 2,
                "gpu_milli": 1000,
                "gpu_spec": [],
            },
            "placement": {"node": 0, "gpus": [0, 1], "milli": [1000, 1000]},
        },
        {
            "op": "allocate",
            "pod": {
                "name": "c",
                "cpu_milli": 1,
                "memory_mib": 1,
                "num_gpu": 0,
                "gpu_milli": 0,
                "gpu_spec": [],
            },
            "placement": {"node": 2, "gpus": [], "milli": []},
        },
        {"op": "release", "pod": "c"},
    ]
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"op": "allo')
    service = AllocationService(simulated_nodes(3), journal=journal)  # --journal alias
    by_pod = {b["pod"]: b for b in service.bookings()}
    assert set(by_pod) == {"default/a", "ml/b"}
    assert by_pod["default/a"]["node"] == "sim-node-01"
    assert by_pod["default/a"]["gpus"][0]["uuid"] == service.gpu_uuids["sim-node-01"][2]
    report = service.health()["store"]["journal_imported"]
    assert report["bookings"] == 2 and report["torn_tail_skipped"] is True
    assert journal.with_name(journal.name + LEGACY_SUFFIX).exists()  # kept, moved aside
    service.release("a")
    service.close()
    again = AllocationService(simulated_nodes(3), state=journal)  # not imported twice
    assert [b["pod"] for b in again.bookings()] == ["ml/b"]


def test_garbled_journal_line_stops_the_import_naming_the_line(tmp_path):
    journal = tmp_path / "journal.jsonl"
    journal.write_text(
        '{"op": "release", "pod": "x"}\n'
        '{"op": "rel\xe9ase"  garbled\n'
        '{"op": "release", "pod": "y"}\n'
    )
    with pytest.raises(StoreError, match=r"journal .*journal.jsonl.* line 2 cannot be read"):
        AllocationService(simulated_nodes(1), state=journal)
    with pytest.raises(StoreError, match="line 2"):  # still refused: nothing half-imported
        AllocationService(simulated_nodes(1), state=journal)


def test_serving_policy_is_persisted(tmp_path):
    from keti_ray.promotion import write_pointer

    db = tmp_path / "s.db"
    service = AllocationService(simulated_nodes(2), state=db)
    assert service.set_policy(PolicySpec("bestfit")) == "bestfit"
    service.close()
    assert AllocationService(simulated_nodes(2), state=db).policy_version == "bestfit"
    pointer = tmp_path / "serving.json"
    write_pointer(pointer, None, None, policy="packing")
    service = AllocationService(simulated_nodes(2), state=db)
    service.set_policy(PolicySpec.from_config({"pointer": str(pointer)}))
    service.close()
    write_pointer(pointer, None, None, policy="clustering")  # promoted while it was down
    assert AllocationService(simulated_nodes(2), state=db).policy_version == "clustering"


def test_reconcile_releases_gone_pods_and_reports_unknown(tmp_path):
    service = AllocationService(simulated_nodes(2), state=tmp_path / "s.db")
    a = service.allocate(pod("ml/a", num=1, milli=500))
    service.allocate(pod("ml/b", num=1, milli=500))
    young = service.reconcile({"ml/a": a.node}, grace_s=30)  # b is young: may await its bind
    assert young["released"] == []
    report = service.reconcile({"ml/a": "elsewhere", "ml/c": "sim-node-00"}, grace_s=0)
    assert report == {
        "released": ["ml/b"],
        "unknown": ["ml/c"],
        "mismatched": {"ml/a": {"booked": a.node, "bound": "elsewhere"}},
    }
    assert [b["pod"] for b in service.bookings()] == ["ml/a"]


def test_bind_restricts_the_choice_to_the_node(tmp_path):
    service = AllocationService(simulated_nodes(3), state=tmp_path / "s.db")
    d = service.allocate(pod("ml/x", num=1, milli=400), node="sim-node-02")
    assert d.node == "sim-node-02"
    with pytest.raises(NoFit, match="node 'sim-node-02' can host"):
        service.allocate(pod("ml/y", num=4, milli=1000), node="sim-node-02")


@pytest.mark.parametrize("flag", ["--state", "--journal"])
def test_keti_ray_up_stops_on_an_unreadable_store_naming_it(tmp_path, flag):
    bad = tmp_path / "state.db"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(5000))  # a header, then garbage
    proc = subprocess.run(
        [sys.executable, "-m", "keti_ray.cli", "up", flag, str(bad), "--exit-after", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "cannot be read" in proc.stderr
    assert "starting Ray" not in proc.stderr  # stopped before anything was started


def test_closing_while_another_thread_writes_does_not_crash_the_process(tmp_path):
    """The pointer follower persists the serving policy from its own thread. Closing the
    store under it once crashed pytest (SIGSEGV in sqlite3); now close waits for the write and
    the late user gets a Python error. Run in a child so a crash fails this test, not the run."""
    script = textwrap.dedent(
        f"""
        import json
        import threading
        from keti_ray.booking import BookingStore
        errors = []
        for i in range(200):
            store = BookingStore({str(tmp_path / "s.db")!r} if i % 2 else None)
            started = threading.Event()

            def write():
                started.set()
                while True:
                    try:
                        with store.transaction() as tx:
                            tx.set_meta("serving_policy", {{"i": i}})
                        store.meta("serving_policy")
                    except Exception as exc:
                        errors.append(type(exc).__name__)
                        return

            writer = threading.Thread(target=write)
            writer.start()
            started.wait()
            store.close()
            writer.join()
        print(json.dumps(errors))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    errors = json.loads(done.stdout)
    assert len(errors) == 200  # every writer saw the close as an exception and stopped
    assert set(errors) <= {"StoreUnavailable", "ProgrammingError"}


def test_service_close_waits_for_the_pointer_follower(tmp_path):
    from keti_ray.promotion import write_pointer

    pointer = tmp_path / "serving.json"
    write_pointer(pointer, None, None, policy="bestfit")
    service = AllocationService(
        simulated_nodes(2),
        state=tmp_path / "s.db",
        policy=PolicySpec.from_config({"pointer": str(pointer)}),
        follow_pointer_s=0.01,
    )
    follower = service.policies._follower
    assert follower is not None and follower.is_alive()
    service.close()
    assert not follower.is_alive()
