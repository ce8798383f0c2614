"""`keti-ray agent --standalone`, the GPU DaemonSet's process: the plugin with decisions from
the API-server emulator, node GPUs published on the Node, telemetry POSTed to an HTTP
receiver standing in for the allocator's /telemetry, and /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client

from keti_ray.agent.node_agent import AgentConfig
from keti_ray.agent.publish import label_value, node_patch
from keti_ray.agent.standalone import StandaloneAgent
from keti_ray.agent.telemetry import HttpSink
from keti_ray.constants import GPU_RESOURCE as R
from keti_ray.deviceplugin.nvml import GpuInfo, SimulatedBackend

sys.path.insert(0, str(Path(__file__).parents[1] / "deviceplugin"))
sys.path.insert(0, str(Path(__file__).parents[1] / "k8s"))
from apiserver_emulator import ApiServerEmulator  # noqa: E402
from kubelet_emulator import KubeletEmulator  # noqa: E402

TOKEN = "agent-sa"
AGENT_RULES = [  # what the DaemonSet's service account needs, and no more
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]},
]


class Receiver:
    """An HTTP server that keeps every JSON body POSTed to it (the allocator's /telemetry)."""

    def __init__(self, token: str | None = None, fail_first: int = 0) -> None:
        self.posts: list[dict] = []
        self.refused: list[dict] = []
        self.auth: list[str | None] = []
        self.fail_first = fail_first
        recv = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recv.auth.append(self.headers.get("Authorization"))
                ok = token is None or self.headers.get("Authorization") == f"Bearer {token}"
                if ok and len(recv.refused) < recv.fail_first:  # the allocator is restarting
                    recv.refused.append(json.loads(body))
                    self.send_response(503)
                    self.end_headers()
                    return
                if ok:
                    recv.posts.append(json.loads(body))
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_node_patch_holds_the_inventory():
    gpus = [
        GpuInfo(1, "GPU-b", "NVIDIA H200", 132, 143771),
        GpuInfo(0, "GPU-a", "NVIDIA H200", 0, 143771),
    ]
    meta = node_patch(gpus)["metadata"]
    assert meta["labels"] == {"keti.re.kr/gpu-model": "NVIDIA-H200"}
    assert meta["annotations"] == {
        "keti.re.kr/gpu-uuids": "GPU-a,GPU-b",  # index order
        "keti.re.kr/gpu-sm-count": "132",  # NVML's 0 -> the data sheet's 132
        "keti.re.kr/gpu-memory-mib": "143771",
    }
    assert label_value("  NVIDIA A100-SXM4-80GB (rev a1) ") == "NVIDIA-A100-SXM4-80GB-rev-a1"


def test_http_sink_resends_a_refused_batch_under_the_same_id():
    recv = Receiver(token="t", fail_first=2)
    sink = HttpSink(recv.url + "/telemetry", "n1", token="t", retry_s=0.05)
    try:
        sink.put([{"kind": "gpu", "i": 1}])
        assert sink.flush(5.0)
        assert len(recv.refused) == 2 and len(recv.posts) == 1
        assert {r["batch"] for r in recv.refused} == {recv.posts[0]["batch"]}
        assert recv.posts[0]["records"] == [{"kind": "gpu", "i": 1}]
    finally:
        sink.close()
        recv.stop()


def test_http_sink_keeps_batches_while_the_allocator_is_away():
    recv = Receiver(token="t")
    port = recv.server.server_address[1]
    recv.stop()  # away
    sink = HttpSink(
        f"http://127.0.0.1:{port}/telemetry", "n1", token="t", retry_s=0.05, max_batches=3
    )
    try:
        for i in range(5):
            sink.put([{"kind": "gpu", "i": i}])
        time.sleep(0.3)
        assert sink.sent == 0 and sink.failures >= 1 and sink.dropped == 2
    finally:
        sink.close()


@pytest.fixture
def env(short_tmp):
    api_emu = ApiServerEmulator().start()
    api_emu.authorize(TOKEN, AGENT_RULES)
    cfg = client.Configuration()
    cfg.host = api_emu.url
    admin = client.CoreV1Api(client.ApiClient(cfg))
    admin.create_node({"metadata": {"name": "gpu-a"}, "status": {"allocatable": {R: "200"}}})
    recv = Receiver(token="push-token")
    kubelet = KubeletEmulator(short_tmp / "dp", pod_resources_dir=short_tmp / "pr").start()
    yield api_emu, admin, recv, kubelet
    kubelet.stop()
    recv.stop()
    api_emu.stop()


def test_standalone_agent_publishes_pushes_and_follows_decisions(env, short_tmp):
    from keti_ray.annotations import Allocation, ContainerAllocation, encode_allocation

    api_emu, admin, recv, kubelet = env
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        node_name="gpu-a",
        simulate=2,
        mps=False,
        status_host_dir=str(short_tmp / "st"),
        limits_host_dir=str(short_tmp / "lim"),
        telemetry_interval_s=0.1,
        apiserver=api_emu.url,
        apiserver_token=TOKEN,
        pod_resources_socket=str(short_tmp / "pr" / "kubelet.sock"),
    )
    agent = StandaloneAgent(cfg, allocator_url=recv.url, token="push-token", metrics_port=0)
    try:
        uuids = [g.uuid for g in SimulatedBackend(2, seed="gpu-a").discover()]
        assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
        deadline = time.monotonic() + 5
        while agent.publisher.published == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        ann = admin.read_node("gpu-a").metadata.annotations
        assert ann["keti.re.kr/gpu-uuids"] == ",".join(uuids)
        assert ann["keti.re.kr/gpu-sm-count"] == "132"

        alloc = Allocation(
            node="gpu-a",
            policy="fgd",
            containers={
                "main": ContainerAllocation(
                    gpus=(uuids[1],), milli=400, sm_pct=40, sms=52, mechanism="mps"
                )
            },
        )
        admin.create_namespaced_pod(
            "default",
            {
                "metadata": {
                    "name": "p",
                    "annotations": {"keti.re.kr/allocation": encode_allocation(alloc)},
                },
                "spec": {
                    "containers": [
                        {"name": "main", "image": "x", "resources": {"limits": {R: "40"}}}
                    ]
                },
            },
        )
        admin.create_namespaced_pod_binding(
            "p",
            "default",
            {"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "gpu-a"}},
            _preload_content=False,
        )
        _, resp = kubelet.admit(R, 40, pod=("default", "p"))
        assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == uuids[1]

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            r["kind"] == "allocation" for p in recv.posts for r in p["records"]
        ):
            time.sleep(0.05)
        post = recv.posts[-1]
        assert post["node"] == "gpu-a" and [g["uuid"] for g in post["inventory"]] == uuids
        assert len({p["batch"] for p in recv.posts}) == len(recv.posts)  # one ID per batch
        rows = [r for p in recv.posts for r in p["records"] if r["kind"] == "allocation"]
        assert rows[-1]["pod"] == "default/p" and rows[-1]["units"] == 40
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics").read().decode()
        )
        assert "keti_agent_up 1.0" in text
        assert f'keti_agent_gpu_healthy{{gpu_uuid="{uuids[1]}"}} 1.0' in text
        assert 'keti_plugin_decisions_honoured_total{call="Allocate"} 1.0' in text
        # the service account did exactly what its RBAC rules allow
        assert {(c.verb, c.resource) for c in api_emu.calls_by(TOKEN)} == {
            ("list", "pods"),
            ("watch", "pods"),
            ("patch", "nodes"),
        }
    finally:
        agent.stop()


def test_standalone_cli_runs_and_stops(env, short_tmp):
    api_emu, admin, recv, kubelet = env
    root = Path(__file__).resolve().parents[2]
    token = short_tmp / "token"
    token.write_text("push-token\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keti_ray.cli import app, plugin_cmd; app(prog_name='keti-ray')",
            "agent",
            "--standalone",
            "--node-name",
            "gpu-a",
            "--simulate",
            "1",
            "--no-mps",
            "--plugin-dir",
            str(short_tmp / "dp"),
            "--status-dir",
            str(short_tmp / "st"),
            "--limits-dir",
            str(short_tmp / "lim"),
            "--interval",
            "0.2",
            "--allocator-url",
            recv.url,
            "--token-file",
            str(token),
            "--apiserver",
            api_emu.url,
            "--run-for",
            "2.5",
        ],
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[0])
    assert info["node_id"] == "gpu-a" and len(info["gpus"]) == 1
    assert recv.posts and all(a == "Bearer push-token" for a in recv.auth)
    assert admin.read_node("gpu-a").metadata.labels["keti.re.kr/gpu-model"] == "Simulated-H100"
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keti_ray.cli import app, plugin_cmd; app(prog_name='keti-ray')",
            "agent",
            "--standalone",
            "--node-name",
            "x",
            "--apiserver",
            "kube",
        ],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--apiserver must be" in bad.stderr
