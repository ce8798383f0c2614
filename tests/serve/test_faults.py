"""Fault injection on the real service (Ray + Serve, over HTTP) during a stream of bookings.

SIGKILL of the state actor, of a Serve replica, and of the whole service (`keti-ray up`, every
process of its session), three times each: a whole-service kill is a full restart (20-40 s on
the 2-core CI machine), and the later ones kill a service that came back from a kill.
After each: every 200 is present with the same node and GPUs, nothing is booked twice, no GPU is
over-full, and every booking is one a client got a 200 for: a request that got a 5xx (or lost
its connection) is retried until it gets its placement or a clean 409, so a booking nobody knows
about (a ghost) would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from ray import serve

from serve.app import AllocatorIngress
from serve.state import ClusterSource

KILLS = 3
SERVICE_KILLS = 3
RETRY_FOR_S = 60.0


class Stream:
    """Client threads booking unique small pods, retrying each until 200 or 409."""

    def __init__(self, base_url: str, prefix: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.prefix = prefix
        self.acked: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.refused: set[str] = set()
        self.unanswered: set[str] = set()
        self.retried = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def __enter__(self) -> Stream:
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(RETRY_FOR_S + 30)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _run(self, t: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                name = f"{self.prefix}-{t}-{i}"
                i += 1
                gpu = {"num_gpu": 1, "gpu_milli": 10} if i % 2 else {}
                body = {"pod": {"name": name, "cpu_milli": 10, "memory_mib": 10, **gpu}}
                self._book(client, f"default/{name}", body)

    def _book(self, client: httpx.Client, key: str, body: dict) -> None:
        deadline = time.time() + RETRY_FOR_S
        first = True
        while time.time() < deadline:
            if not first:
                with self.lock:
                    self.retried += 1
                time.sleep(0.2)
            first = False
            try:
                r = client.post("/allocate", json=body)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                d = r.json()
                with self.lock:
                    self.acked[key] = (d["node"], tuple(g["uuid"] for g in d["gpus"]))
                return
            if r.status_code == 409:
                with self.lock:
                    self.refused.add(key)
                return
            if r.status_code == 404 and "not found" in r.text.lower():
                continue  # Serve's proxy is up, the app not deployed yet (a restart)
            assert r.status_code >= 500, (key, r.status_code, r.text[:200])
        with self.lock:
            self.unanswered.add(key)


def check(base_url: str, stream: Stream, final: bool) -> None:
    with stream.lock:  # before reading the bookings: everything acked by now must be there
        acked = dict(stream.acked)
        unanswered = set(stream.unanswered)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        bookings = client.get("/bookings").json()
        partition = client.get("/partition").json()
    booked = {b["pod"]: (b["node"], tuple(g["uuid"] for g in b["gpus"])) for b in bookings}
    missing = {k for k, v in acked.items() if booked.get(k) != v}
    assert not missing, f"acknowledged bookings lost or moved: {sorted(missing)[:5]}"
    if final:  # nothing in flight: every booking is one a client was told about
        ghosts = {k for k in booked if k.startswith(f"default/{stream.prefix}-")} - set(acked)
        assert not ghosts, f"bookings no client got a 200 for: {sorted(ghosts)[:5]}"
        assert not unanswered, f"requests never answered: {sorted(unanswered)[:5]}"
    pods_seen: list[str] = []
    for node in partition["nodes"].values():
        for gpu in node["gpus"]:
            assert sum(p["milli"] for p in gpu["partitions"]) + gpu["free_milli"] == 1000
            pods_seen += [p["pod"] for p in gpu["partitions"]]
    assert len(pods_seen) == len(set(pods_seen)), "a pod holds a share twice"
    if final:
        gpu_pods = [k for k, (_, uuids) in booked.items() if uuids]
        assert sorted(pods_seen) == sorted(gpu_pods), "a share without a booking, or leaked"


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def actor_pids(name_prefix: str) -> list[int]:
    from ray._private import state

    return [
        a["Pid"]
        for a in state.actors().values()
        if a["State"] == "ALIVE" and (a.get("Name") or "").startswith(name_prefix)
    ]


UP = [sys.executable, "-m", "keti_ray.cli", "up", "--sim-nodes", "2", "--replicas", "1"]


def start_service(state: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*UP, "--state", state, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own session: every Ray process it starts is in it
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the service's session (driver, GCS, raylet, workers)."""
    sid = proc.pid
    for _ in range(5):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _sid(int(p)) == sid]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    proc.wait(30)


def _sid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[3])  # state ppid pgrp session
    except (OSError, IndexError, ValueError):
        return None


def ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_of_the_whole_service(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state = str(tmp_path / "bookings.db")
    proc = start_service(state, port)
    try:
        wait_for(lambda: ready(base), 180, "keti-ray up")
        with Stream(base, prefix="service", threads=3) as stream:
            for _ in range(SERVICE_KILLS):
                before = stream.count()
                wait_for(lambda: stream.count() >= before + 5, 60, "bookings before kill")  # noqa: B023
                kill_session(proc)
                proc = start_service(state, port)
                wait_for(lambda: ready(base), 180, "keti-ray up after SIGKILL")
                at_restart = stream.count()
                wait_for(lambda: stream.count() >= at_restart + 5, 90, "bookings after")  # noqa: B023
                check(base, stream, final=False)
        check(base, stream, final=True)
        assert stream.retried > 0
        print(f"whole service: {len(stream.acked)} acknowledged, {stream.retried} retries")
    finally:
        kill_session(proc)


# After the whole-service test: while it restarts `keti-ray up`, no other Ray runs in this
# process (the package's shared one starts with the first module that asks for it).
@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_session):
    state = tmp_path_factory.mktemp("faults") / "bookings.db"
    try:
        source = ClusterSource(sim_nodes=4, state=str(state))
        serve.run(
            AllocatorIngress.options(num_replicas=2).bind(source), name="alloc", route_prefix="/"
        )
        yield f"http://127.0.0.1:{serve_session.port}"
    finally:
        serve_session.clean()


@pytest.mark.parametrize("target", ["state-actor", "replica"])
def test_sigkill_during_a_stream_of_bookings(served, target):
    from serve.state import STATE_ACTOR_NAME

    prefix = STATE_ACTOR_NAME if target == "state-actor" else "SERVE_REPLICA::alloc#Allocator"
    with Stream(served, prefix=target) as stream:
        for _ in range(KILLS):
            before = stream.count()
            wait_for(lambda: stream.count() >= before + 10, 60, "bookings before the kill")  # noqa: B023
            pids = actor_pids(prefix)
            assert pids, f"no live {target}"
            os.kill(pids[0], signal.SIGKILL)
            at_kill = stream.count()
            wait_for(lambda: stream.count() >= at_kill + 10, 90, f"bookings after {target}")  # noqa: B023
            check(served, stream, final=False)
    check(served, stream, final=True)
    assert stream.retried > 0, "no request saw the kill: the test did not test anything"
    print(f"{target}: {len(stream.acked)} acknowledged, {stream.retried} retries")
