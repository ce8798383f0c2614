"""kuberay/monitoring/: the dashboard and the alert rules use only metrics the code exports
(read from the allocator's and the agent's own registries), the rules pass promtool's check
and its unit tests, the dashboard loads with Grafana's schema types, and the scrape configs
select the pods the manifests define."""

from __future__ import annotations

import json
import re
import subprocess

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keti_ray.agent.node_agent import AgentMetrics
from keti_ray.manifests import MANIFEST_DIR, load_all
from keti_ray.service import AllocationService
from keti_ray.simcluster import simulated_nodes
from tests.debian_tools import ToolUnavailable, debian_tool

MONITORING = MANIFEST_DIR / "monitoring"
RULES = MONITORING / "keti-ray.rules.yml"
RULE_TESTS = MONITORING / "keti-ray.rules.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS_BUILTINS = {"up"}  # series Prometheus itself writes for every target
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
REQUIRED_ALERTS = {  # the list: no decisions, refusals rising, GPU, agent, store
    "KetiAllocatorNoDecisions",
    "KetiAllocatorRefusalRateRising",
    "KetiGpuUnhealthy",
    "KetiNodeAgentDown",
    "KetiAllocatorStoreErrors",
}


def exported(text: str | bytes) -> set[str]:
    """Every series name a scrape of this text can show, from its families (HELP/TYPE lines
    count, so a labelled counter no one has incremented yet is still known)."""
    if isinstance(text, bytes):
        text = text.decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture(scope="module")
def code_exports() -> set[str]:
    allocator = AllocationService(simulated_nodes(2)).metrics_text()
    agent = generate_latest(AgentMetrics().registry).decode()
    return exported(allocator) | exported(agent)


def selectors(expr: str) -> set[str]:
    """Metric names an expression selects, from PromQL's own grammar (promql-parser)."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_monitoring_holds_only_its_files():
    names = {p.name for p in MONITORING.rglob("*") if p.is_file()}
    assert names == {
        "README.md",
        RULES.name,
        RULE_TESTS.name,
        DASHBOARD.name,
        "prometheus.yml",
        "podmonitors.yml",
    }


def test_every_metric_used_is_exported(code_exports):
    recorded = {r["record"] for r in rules() if "record" in r}
    used = {n for r in rules() for n in selectors(r["expr"])}
    used |= {n for e in dashboard_exprs() for n in selectors(e)}
    unknown = used - code_exports - recorded - PROMETHEUS_BUILTINS
    assert not unknown, f"not exported by the code: {sorted(unknown)}"
    assert {"keti_agent_sm_occupancy_ratio", "keti_allocator_store_errors_total"} <= used


def test_a_misspelt_metric_would_be_caught(code_exports):
    assert selectors("rate(keti_allocator_decision_total[5m])") - code_exports


def test_metric_names_follow_prometheus_conventions(code_exports):
    keti = {n for n in code_exports if n.startswith("keti_")}
    text = AllocationService(simulated_nodes(1)).metrics_text().decode()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            assert family.name + "_total" in keti
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge" and family.name.endswith(("_pct", "_percent")):
            pytest.fail(f"{family.name}: export ratios (0-1), not percent")


def test_required_alerts_are_there():
    names = {r["alert"] for r in rules() if "alert" in r}
    assert REQUIRED_ALERTS <= names, REQUIRED_ALERTS - names
    assert all(r.get("labels", {}).get("severity") for r in rules() if "alert" in r)


def test_promtool_checks_and_unit_tests_the_rules():
    try:
        promtool = debian_tool(("promtool",), "prometheus")
    except ToolUnavailable as exc:
        pytest.skip(f"promtool unavailable, rules only parse-tested: {exc}")
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        done = subprocess.run(
            [promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_scrape_config(tmp_path):
    """Debian's promtool is built without Kubernetes service discovery, so the check runs on
    a copy with each job's kubernetes_sd_configs swapped for a static target; the rest
    (relabelling, rule_files, auth) is checked as written."""
    try:
        promtool = debian_tool(("promtool",), "prometheus")
    except ToolUnavailable as exc:
        pytest.skip(f"promtool unavailable: {exc}")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _pod_template(kind: str, name: str) -> dict:
    for m in load_all():
        if m.kind == kind and m.name == name:
            spec = m.doc["spec"]
            if kind == "RayService":
                return spec["rayClusterConfig"]["headGroupSpec"]["template"]
            return spec["template"]
    raise AssertionError(f"no {kind} {name} in kuberay/")


def _keeps(regex: str, labels: dict, ports: set[str], source: list[str]) -> bool:
    values = []
    for s in source:
        key = s.removeprefix("__meta_kubernetes_pod_label_")
        if s == "__meta_kubernetes_pod_container_port_name":
            return any(
                re.fullmatch(regex, ";".join([*values, p])) for p in ports
            )  # port name is last
        values.append(next(v for k, v in labels.items() if re.sub(r"[^a-z0-9]", "_", k) == key))
    return re.fullmatch(regex, ";".join(values)) is not None


def test_scrape_configs_select_the_manifests_pods():
    """The keep-rules and PodMonitor selectors match the labels and port names of the pods
    kuberay/ defines (the agent's port must still be added: see the README)."""
    allocator = _pod_template("RayService", "keti-allocator")
    labels = allocator["metadata"]["labels"]
    ports = {p["name"] for c in allocator["spec"]["containers"] for p in c.get("ports", [])}
    jobs = {
        j["job_name"]: j
        for j in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    }
    keep = jobs["keti-allocator"]["relabel_configs"][0]
    assert _keeps(keep["regex"], labels, ports, keep["source_labels"])
    monitors = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((MONITORING / "podmonitors.yml").read_text())
        if d["kind"] == "PodMonitor"
    }
    alloc_monitor = monitors["keti-allocator"]["spec"]
    assert alloc_monitor["selector"]["matchLabels"].items() <= labels.items()
    assert alloc_monitor["podMetricsEndpoints"][0]["port"] in ports
    plugin = _pod_template("DaemonSet", "keti-gpu-plugin")
    agent_monitor = monitors["keti-node-agent"]["spec"]
    assert agent_monitor["selector"]["matchLabels"].items() <= plugin["metadata"]["labels"].items()
    plugin_ports = {
        p["name"] for c in plugin["spec"]["containers"] for p in c.get("ports", []) if "name" in p
    }
    assert agent_monitor["podMetricsEndpoints"][0]["port"] in plugin_ports
    keep = jobs["keti-node-agent"]["relabel_configs"][0]
    assert _keeps(keep["regex"], plugin["metadata"]["labels"], plugin_ports, keep["source_labels"])


def test_prometheusrule_carries_the_rules_file():
    docs = list(yaml.safe_load_all((MONITORING / "podmonitors.yml").read_text()))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def _plain(value):
    if hasattr(value, "to_json"):
        return _plain(value.to_json())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return getattr(value, "value", value) if not isinstance(value, (str, int, float)) else value


def _lost(given, kept, path=""):
    """Keys of `given` that Grafana's schema types did not keep (unknown to the schema)."""
    if isinstance(given, dict):
        out = []
        for k, v in given.items():
            out += [f"{path}.{k}"] if k not in kept else _lost(v, kept[k], f"{path}.{k}")
        return out
    if isinstance(given, list):
        return [
            x
            for i, (a, b) in enumerate(zip(given, kept, strict=True))
            for x in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


def _grafana_roundtrip(dashboard: dict) -> dict:
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and Prometheus queries get their own types
    return _plain(Dashboard.from_json(dashboard))


def test_dashboard_loads_with_grafanas_schema():
    pytest.importorskip("grafana_foundation_sdk")
    dashboard = json.loads(DASHBOARD.read_text())
    assert _lost(dashboard, _grafana_roundtrip(dashboard)) == []
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(
        t["datasource"]["uid"] == "${datasource}"
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    )


def test_grafana_schema_check_catches_unknown_fields():
    pytest.importorskip("grafana_foundation_sdk")
    dashboard = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    panel["options"]["legend"]["placment"] = "bottom"
    panel["targets"][0]["exp"] = panel["targets"][0]["expr"]
    lost = _lost(dashboard, _grafana_roundtrip(dashboard))
    assert any(x.endswith(".legend.placment") for x in lost)
    assert any(x.endswith("].exp") for x in lost)
