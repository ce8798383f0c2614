"""A node agent's Prometheus metrics, scraped over real HTTP from an in-process NodeAgent on
simulated GPUs (no kubelet needed: the plugins are not served here)."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keti_ray.agent.metrics import ENV_AGENT_METRICS_PORT, AgentMetrics
from keti_ray.agent.node_agent import AgentConfig, NodeAgent
from keti_ray.agent.telemetry import ListSink


def scrape(port: int) -> dict[tuple[str, str], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, s.labels.get("gpu_uuid", "")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_agent_serves_up_health_and_occupancy(monkeypatch, short_tmp):
    monkeypatch.setenv(ENV_AGENT_METRICS_PORT, "0")
    monkeypatch.setenv("KETI_AGENT_METRICS_ADDR", "127.0.0.1")
    sink = ListSink()
    cfg = AgentConfig(
        plugin_dir=str(short_tmp / "dp"),
        simulate=2,
        serve_plugins=False,
        mps=False,
        status_host_dir=str(short_tmp / "status"),
        telemetry_interval_s=0.1,
        node_name="metrics-node",
    )
    agent = NodeAgent(cfg, sink=sink)
    try:
        port = agent.metrics.port
        uuids = [g.uuid for g in agent.gpus]
        first = scrape(port)
        assert first[("keti_agent_up", "")] == 1
        assert all(first[("keti_agent_gpu_healthy", u)] == 1 for u in uuids)
        wait_for(lambda: sink.records or None)  # batches still reach the agent's own sink
        assert all(scrape(port)[("keti_agent_sm_occupancy_ratio", u)] == 0 for u in uuids)
        assert agent.simulate_gpu_failure(0)

        def after_failure():
            now = scrape(port)
            return now if now[("keti_agent_gpu_healthy", uuids[0])] == 0 else None

        now = wait_for(after_failure)
        assert now[("keti_agent_gpu_healthy", uuids[1])] == 1
    finally:
        agent.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)  # the server stopped with it


def test_shimless_processes_count_what_no_shim_reports():
    class Gpu:
        def __init__(self, uuid):
            self.uuid = uuid

    class Backend:
        def probe(self, uuid):
            raise RuntimeError("NVML gone")  # cannot be asked: reported unhealthy

    metrics = AgentMetrics(Backend(), [Gpu("GPU-a"), Gpu("GPU-b")], ListSink())
    records = [
        {"kind": "gpu", "gpu_uuid": "GPU-a", "sm_pct": 75.0},
        *({"kind": "process", "gpu_uuid": "GPU-a", "pid": p} for p in (4001, 4002, 4003)),
        {"kind": "process", "gpu_uuid": "GPU-b", "pid": 5001},
        {"kind": "shim", "gpu_uuid": "GPU-a", "pid": 7},  # container PID: counted, not matched
        {"kind": "shim", "gpu_uuid": "GPU-b", "pid": 8},
        {"kind": "shim", "gpu_uuid": "GPU-b", "pid": 9},
    ]
    metrics.put(records)
    assert metrics.sink.records == records
    families = {
        (s.name, s.labels.get("gpu_uuid")): s.value
        for f in text_string_to_metric_families(metrics.text().decode())
        for s in f.samples
    }
    assert families[("keti_agent_shimless_processes", "GPU-a")] == 2
    assert families[("keti_agent_shimless_processes", "GPU-b")] == 0
    assert families[("keti_agent_sm_occupancy_ratio", "GPU-a")] == 0.75
    assert families[("keti_agent_gpu_healthy", "GPU-a")] == 0


def test_a_taken_port_leaves_the_agent_running():
    first = AgentMetrics(None, [], ListSink(), port=0)
    try:
        second = AgentMetrics(None, [], ListSink(), port=first.port)
        assert second.port is None and str(first.port) in second.error
        second.put([{"kind": "gpu", "gpu_uuid": "GPU-x", "sm_pct": 10.0}])  # still a sink
        assert second.sink.records
    finally:
        first.stop()


def test_bad_port_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_AGENT_METRICS_PORT, "http")

    class Agent:
        backend, gpus, sink = None, [], ListSink()

    with pytest.raises(ValueError, match=ENV_AGENT_METRICS_PORT):
        AgentMetrics.for_agent(Agent())
