"""Run the TLS gate (keti_ray.k8s.tlsgate) on a free loopback port in a thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from keti_ray.k8s.tlsgate import gate_app, uvicorn_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningGate:
    """Start/stop as a context manager; it can be started again (same port) after a stop."""

    def __init__(self, upstream: str, token: str | None, cert, key, client_ca) -> None:
        self.port = free_port()
        self.args = (upstream, token, str(cert), str(key), str(client_ca))

    def __enter__(self) -> RunningGate:
        upstream, token, cert, key, client_ca = self.args
        cfg = uvicorn_config(
            gate_app(upstream, token), "127.0.0.1", self.port, cert, key, client_ca
        )
        self.server = uvicorn.Server(cfg)
        self.server.install_signal_handlers = lambda: None
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the TLS gate did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"
