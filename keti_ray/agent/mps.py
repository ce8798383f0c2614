"""The node's MPS control daemon: start, health check, restart, stop.

MPS is what lets two SM-capped pods run side by side (../shared/docs/sm-partitioning.md), so
the agent keeps one control daemon per node, with the pipe directory every pod mounts
(`CUDA_MPS_PIPE_DIRECTORY`).  Commands are those of `nvidia-cuda-mps-control`: `-d` starts
the daemon, `get_server_list` on stdin queries it, `quit` stops it.

Ceilings (`apply_ceilings`): the daemon's `set_default_active_thread_percentage` and
`set_default_device_pinned_mem_limit` are ceilings no client env can pass (measured on the
H200, ../shared/docs/sm-partitioning.md).  A default only reaches servers started after it,
so running servers get the same values through `set_active_thread_percentage <PID>` /
`set_device_pinned_mem_limit <PID>`; and `quit` forgets them, so a restarted daemon gets them
again.  Each value is read back with the matching `get_*` command.  The daemon runs with
CUDA_DEVICE_ORDER=PCI_BUS_ID so its device ordinals are NVML's indices.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from keti_ray.constants import (
    ENV_MPS_LOG_DIRECTORY,
    ENV_MPS_PIPE_DIRECTORY,
    MPS_LOG_DIR,
    MPS_PIPE_DIR,
)

log = logging.getLogger(__name__)

MPS_BINARY = "nvidia-cuda-mps-control"


class MpsError(RuntimeError):
    """The daemon could not be started or stopped; the message says what it answered."""


@dataclass
class MpsStatus:
    available: bool
    running: bool
    pids: list[int]
    pipe_dir: str
    log_dir: str
    restarts: int


class MpsDaemon:
    """One MPS control daemon, identified by its pipe directory."""

    def __init__(
        self,
        pipe_dir: str | os.PathLike[str] = MPS_PIPE_DIR,
        log_dir: str | os.PathLike[str] = MPS_LOG_DIR,
        binary: str = MPS_BINARY,
        timeout_s: float = 10.0,
    ) -> None:
        self.pipe_dir = Path(pipe_dir)
        self.log_dir = Path(log_dir)
        self.binary = binary
        self.timeout_s = timeout_s
        self.restarts = 0

    # ----- queries ------------------------------------------------------------------------
    def available(self) -> bool:
        """True where the MPS control binary exists (a GPU node with the driver tools)."""
        return shutil.which(self.binary) is not None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV_MPS_PIPE_DIRECTORY] = str(self.pipe_dir)
        env[ENV_MPS_LOG_DIRECTORY] = str(self.log_dir)
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # device ordinals = NVML indices
        return env

    def ask(self, command: str) -> str:
        """One command's printed answer; MpsError when the daemon does not answer."""
        proc = self.control(command)
        if proc.returncode != 0:
            raise MpsError(f"'{command}': {(proc.stdout + proc.stderr).strip()}")
        return proc.stdout.strip()

    def servers(self) -> list[int]:
        """PIDs of the running MPS server instances (`get_server_list`)."""
        return sorted(int(w) for w in self.ask("get_server_list").split() if w.isdigit())

    def apply_ceilings(self, ceilings: MpsCeilings) -> dict[str, object]:
        """Set the ceilings as defaults and on every running server, then read each back
        (three control sessions: servers, sets, gets); MpsError naming what did not take."""
        pct = f"{ceilings.thread_pct}"
        pinned = sorted(ceilings.pinned_mib.items())
        servers = self.servers()
        pairs = [
            (f"set_default_active_thread_percentage {pct}",
             "get_default_active_thread_percentage", pct),
        ] + [
            (f"set_default_device_pinned_mem_limit {dev} {mib}M",
             f"get_default_device_pinned_mem_limit {dev}", f"{mib}M")
            for dev, mib in pinned
        ]  # fmt: skip
        for pid in servers:
            pairs.append(
                (f"set_active_thread_percentage {pid} {pct}",
                 f"get_active_thread_percentage {pid}", pct)
            )  # fmt: skip
            pairs += [
                (f"set_device_pinned_mem_limit {pid} {dev} {mib}M",
                 f"get_device_pinned_mem_limit {pid} {dev}", f"{mib}M")
                for dev, mib in pinned
            ]  # fmt: skip
        said = self.ask("\n".join(p[0] for p in pairs))
        got = self.ask("\n".join(p[1] for p in pairs)).splitlines()
        if len(got) != len(pairs):
            raise MpsError(
                f"MPS daemon answered {len(got)} of {len(pairs)} queries: {got} {said!r}"
            )
        wrong = [(p[0], g) for p, g in zip(pairs, got, strict=True) if not _same(g, p[2])]
        if wrong:
            raise MpsError(f"MPS ceilings did not take: {wrong} (daemon said {said!r})")
        return {
            "thread_pct": ceilings.thread_pct,
            "pinned_mib": ceilings.pinned_mib,
            "servers": servers,
        }

    def control(
        self, command: str, timeout_s: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Send command lines to the daemon (as `echo CMD | nvidia-cuda-mps-control`)."""
        return subprocess.run(
            [self.binary],
            input=command + "\n",
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s or self.timeout_s,
        )

    def pids(self) -> list[int]:
        """PIDs of control daemons serving our pipe directory (found through /proc)."""
        out = []
        name = os.path.basename(self.binary)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                args = [a.decode(errors="replace") for a in argv if a]
                if not any(os.path.basename(a) == name for a in args[:2]):
                    continue
                if not {"-d", "-f"} & set(args):
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            key = f"{ENV_MPS_PIPE_DIRECTORY}=".encode()
            pipe = next(
                (e[len(key) :].decode() for e in environ if e.startswith(key)), MPS_PIPE_DIR
            )
            if os.path.realpath(pipe) == os.path.realpath(self.pipe_dir):
                out.append(int(entry.name))
        return sorted(out)

    def healthy(self) -> bool:
        """A daemon serves our pipe directory (seen in /proc, or its control pipe is there)
        and answers `get_server_list`."""
        if not self.available():
            return False
        if not self.pids() and not (self.pipe_dir / "control").exists():
            return False
        try:
            return (
                self.control("get_server_list", timeout_s=min(3.0, self.timeout_s)).returncode == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def status(self) -> MpsStatus:
        pids = self.pids() if self.available() else []
        return MpsStatus(
            available=self.available(),
            running=bool(pids),
            pids=pids,
            pipe_dir=str(self.pipe_dir),
            log_dir=str(self.log_dir),
            restarts=self.restarts,
        )

    # ----- actions ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the daemon (no-op when a healthy one already serves the pipe directory)."""
        if not self.available():
            raise MpsError(f"{self.binary} not found on PATH; MPS is not available on this node")
        if self.healthy():
            return
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [self.binary, "-d"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            start_new_session=True,
        )
        if proc.returncode != 0:
            raise MpsError(
                f"{self.binary} -d exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
            )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                log.info("MPS control daemon up (pipe %s)", self.pipe_dir)
                return
            time.sleep(0.05)
        raise MpsError(f"MPS daemon did not answer within {self.timeout_s}s (log: {self.log_dir})")

    def stop(self) -> None:
        """`quit`, wait for the daemon to exit; SIGTERM then SIGKILL if it does not."""
        pids = self.pids()
        if not pids:
            if (self.pipe_dir / "control").exists() and self.healthy():
                self.control("quit")  # a daemon we cannot see in /proc: ask it, then check
                deadline = time.monotonic() + self.timeout_s
                while self.healthy():
                    if time.monotonic() > deadline:
                        raise MpsError("MPS daemon still answers after 'quit'")
                    time.sleep(0.1)
            return
        try:
            self.control("quit")
        except subprocess.TimeoutExpired:
            log.warning("MPS daemon did not take 'quit'; terminating %s", pids)
        if self._wait_gone(pids, self.timeout_s):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if self._wait_gone(pids, 3.0):
                return
        raise MpsError(f"MPS daemon {pids} would not exit")

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def ensure(self) -> str:
        """The health check the agent runs periodically: 'ok', 'restarted' or 'unavailable'."""
        if not self.available():
            return "unavailable"
        if self.healthy():
            return "ok"
        log.warning("MPS daemon unhealthy; restarting")
        self.restart()
        return "restarted"

    def _wait_gone(self, pids: list[int], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not any(_alive(p) for p in pids):
                return True
            time.sleep(0.05)
        return False


@dataclass(frozen=True)
class MpsCeilings:
    """Server ceilings: active thread percentage (all devices) and pinned MiB per device."""

    thread_pct: int
    pinned_mib: dict[int, int]


def _same(got: str, want: str) -> bool:
    """`get_*` answers: '25.0' for 25, '2048M' for 2048M (also '2G')."""
    got = got.strip().splitlines()[-1].strip() if got.strip() else ""
    try:
        return float(got) == float(want)
    except ValueError:
        pass

    def mib(v: str) -> float | None:
        if v[-1:] in "MG" and v[:-1].replace(".", "", 1).isdigit():
            return float(v[:-1]) * (1024 if v[-1] == "G" else 1)
        return None

    return mib(got) is not None and mib(got) == mib(want)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
