"""The node's MPS control daemon: start, health check, restart, stop.

MPS is what lets two SM-capped pods run side by side (../shared/docs/sm-partitioning.md), so
the agent keeps one control daemon per node, with the pipe directory every pod mounts
(`CUDA_MPS_PIPE_DIRECTORY`).  Commands are those of `nvidia-cuda-mps-control`: `-d` starts
the daemon, `get_server_list` on stdin queries it, `quit` stops it.
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
        return env

    def control(
        self, command: str, timeout_s: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Send one command to the daemon (as `echo CMD | nvidia-cuda-mps-control`)."""
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
