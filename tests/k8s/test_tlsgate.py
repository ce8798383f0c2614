"""The TLS gate: only a client certificate of the scheduler CA gets through, only to the
extender routes, and the upstream sees the bearer token (real TLS, real HTTP)."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .k8s_certs import TestCA
from .k8s_gate import RunningGate


class Upstream(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Upstream.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        data = json.dumps({"Error": ""}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def pki(tmp_path):
    server_ca = TestCA(tmp_path, "keti-allocator-ca")
    client_ca = TestCA(tmp_path, "keti-scheduler-client-ca")
    other_ca = TestCA(tmp_path, "someone-else-ca")
    return {
        "server_ca": server_ca.files.cert,
        "server": server_ca.issue("keti-allocator-gate", dns=("localhost",)),
        "client_ca": client_ca.files.cert,
        "scheduler": client_ca.issue("keti-scheduler", client=True),
        "intruder": other_ca.issue("intruder", client=True),
    }


@pytest.fixture
def gate(pki):
    Upstream.seen = []
    up = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    g = RunningGate(
        f"http://127.0.0.1:{up.server_address[1]}",
        "s3cret",
        pki["server"].cert,
        pki["server"].key,
        pki["client_ca"],
    )
    with g:
        yield g
    up.shutdown()


def client(pki, who: str | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki["server_ca"]))
    if who:
        ctx.load_cert_chain(str(pki[who].cert), str(pki[who].key))
    return httpx.Client(verify=ctx, timeout=5)


def test_the_scheduler_certificate_passes_and_the_token_is_added(pki, gate):
    with client(pki, "scheduler") as c:
        r = c.post(gate.url + "/scheduler/bind", json={"PodName": "p"})
    assert r.status_code == 200 and r.json() == {"Error": ""}
    assert Upstream.seen == [
        {"path": "/scheduler/bind", "auth": "Bearer s3cret", "body": b'{"PodName":"p"}'}
    ]


@pytest.mark.parametrize("who", [None, "intruder"])
def test_no_certificate_or_another_cas_is_refused_by_tls(pki, gate, who):
    with client(pki, who) as c, pytest.raises(httpx.TransportError):
        c.post(gate.url + "/scheduler/filter", json={})
    assert Upstream.seen == []


def test_only_the_extender_routes_pass(pki, gate):
    with client(pki, "scheduler") as c:
        assert c.post(gate.url + "/allocate", json={}).status_code == 404
        assert c.get(gate.url + "/partition").status_code == 404
        assert c.get(gate.url + "/scheduler/bind").status_code == 404
    assert Upstream.seen == []
