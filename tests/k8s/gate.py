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
    def __init__(self, upstream: str, token: str | None, cert, key, client_ca) -> None:
        self.port = free_port()
        cfg = uvicorn_config(
            gate_app(upstream, token), "127.0.0.1", self.port, str(cert), str(key), str(client_ca)
        )
        self.server = uvicorn.Server(cfg)
        self.server.install_signal_handlers = lambda: None
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningGate:
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
