"""NetworkPolicies against who calls whom (as the manifests wire the callers), and the Ray ports.

An emulation of NetworkPolicy ingress semantics (networking.k8s.io/v1): a pod selected by any
policy is isolated; a connection is allowed when some rule's `from` peer matches the source
(podSelector in the policy's namespace, namespaceSelector, or both: the pod in such a namespace)
and its `ports` (none: all) hold the port. Only `matchLabels` selectors are used here (a test
refuses others), and namespaces carry `kubernetes.io/metadata.name`, as the API server sets it.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import yaml

from keti_ray import constants as C
from keti_ray.manifests import Manifest, find

RAY_PORTS = (6379, 8265, 10001, 52365, 10002, 20000)  # GCS, dashboard, client, agent, workers
OPERATOR = ("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
INGRESS = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
STRANGER = ("default", {"app.kubernetes.io/name": "anything"})


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are emulated: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, policy_ns: str, src_ns: str, src_labels: dict) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, peer
    ns_ok = (
        _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src_ns})
        if "namespaceSelector" in peer
        else src_ns == policy_ns
    )
    pod_ok = _matches(peer["podSelector"], src_labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def allowed(manifests, dst_ns: str, dst_labels: dict, port: int, src: tuple[str, dict]) -> bool:
    policies = [
        m.doc
        for m in manifests
        if m.kind == "NetworkPolicy"
        and m.namespace == dst_ns
        and _matches(m.doc["spec"]["podSelector"], dst_labels)
        and "Ingress" in m.doc["spec"]["policyTypes"]
    ]
    if not policies:
        return True  # not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = [p["port"] for p in rule.get("ports") or []]
            if ports and port not in ports:
                continue
            if any(_peer_matches(p, dst_ns, *src) for p in rule.get("from") or []):
                return True
    return False


def pod_labels(m: Manifest) -> list[tuple[str, dict]]:
    """(where, labels) of every pod template an object makes."""
    spec = m.doc["spec"]
    if m.kind in ("DaemonSet", "Deployment"):
        return [(m.where(), spec["template"]["metadata"]["labels"])]
    cluster = spec if m.kind == "RayCluster" else spec.get("rayClusterConfig")
    if not cluster:
        return []
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [(f"{m.where()} {i}", g["template"]["metadata"]["labels"]) for i, g in enumerate(groups)]


@pytest.fixture(scope="module")
def ray_pods(manifests) -> list[tuple[str, str, dict]]:
    return [
        (where, m.namespace, labels)
        for m in manifests
        if m.kind in ("RayService", "RayCluster")
        for where, labels in pod_labels(m)
    ]


def test_every_ray_pod_is_isolated(manifests, ray_pods) -> None:
    assert len(ray_pods) == 4  # allocator head + workers, training head + workers
    for where, ns, labels in ray_pods:
        assert not allowed(manifests, ns, labels, 6379, STRANGER), where


@pytest.mark.parametrize("port", RAY_PORTS)
def test_ray_ports_only_from_ray_pods(manifests, ray_pods, port) -> None:
    for where, ns, labels in ray_pods:
        assert not allowed(manifests, ns, labels, port, INGRESS), (where, port)
        scheduler = find(manifests, "Deployment", "keti-scheduler")
        assert not allowed(
            manifests, ns, labels, port, ("kube-system", pod_labels(scheduler)[0][1])
        )
        # every pod of the same cluster reaches every port of the others
        peers = [
            lab for w, n, lab in ray_pods if n == ns and w.split(" ")[0] == where.split(" ")[0]
        ]
        assert all(allowed(manifests, ns, labels, port, (ns, p)) for p in peers), where
        # the operator only where it must (dashboard and agent), nothing else
        assert allowed(manifests, ns, labels, port, OPERATOR) == (port in (8265, 52365))


def test_the_npu_ray_node_joins_the_allocator_cluster(manifests, ray_pods) -> None:
    npu = find(manifests, "DaemonSet", "keti-npu-plugin")
    src = ("kube-system", pod_labels(npu)[0][1])
    head = next(lab for w, n, lab in ray_pods if "RayService" in w and lab.get(
        "app.kubernetes.io/component") == "ray-head")  # fmt: skip
    assert allowed(manifests, "keti-ray", head, 6379, src)
    training_head = next(lab for w, n, lab in ray_pods if "RayCluster" in w)
    assert not allowed(manifests, "keti-ray", training_head, 6379, src)


def test_callers_reach_what_they_call_and_nothing_else(manifests, ray_pods) -> None:
    """Each caller as the manifests wire it: kube-scheduler -> the extender URL (TLS gate),
    the GPU node agent -> its --allocator URL, people -> Serve through the ingress."""
    rs = find(manifests, "RayService", "keti-allocator")
    head = rs.doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    worker = rs.doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]
    # kube-scheduler
    cm = find(manifests, "ConfigMap", "keti-scheduler-config").doc
    (ext,) = yaml.safe_load(cm["data"]["config.yaml"])["extenders"]
    sched = ("kube-system", pod_labels(find(manifests, "Deployment", "keti-scheduler"))[0][1])
    gate_port = urlparse(ext["urlPrefix"]).port
    svc = find(manifests, "Service", "keti-allocator-scheduler").doc["spec"]
    tls = next(c for c in rs.doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"] if c["name"] == "tls-gate")  # fmt: skip
    target = {p["name"]: p["containerPort"] for p in tls["ports"]}[svc["ports"][0]["targetPort"]]
    assert svc["ports"][0]["port"] == gate_port
    assert allowed(manifests, "keti-ray", head, target, sched)
    assert not allowed(manifests, "keti-ray", head, C.DEFAULT_API_PORT, sched)  # not around it
    assert not allowed(manifests, "keti-ray", head, target, INGRESS)
    assert not allowed(manifests, "keti-ray", head, target, STRANGER)
    # the GPU node agent pushes to Serve
    ds = find(manifests, "DaemonSet", "keti-gpu-plugin")
    agent = next(c for c in ds.doc["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "agent")  # fmt: skip
    flag = next(a for a in agent["command"] if a.startswith("--allocator-url="))
    url = urlparse(flag.split("=", 1)[1])
    assert url.hostname == f"{rs.name}-serve-svc.{rs.namespace}.svc.cluster.local"
    src = ("kube-system", pod_labels(ds)[0][1])
    for labels in (head, worker["labels"]):
        assert allowed(manifests, "keti-ray", labels, url.port, src)
        assert not allowed(manifests, "keti-ray", labels, 6379, src)
        assert allowed(manifests, "keti-ray", labels, C.DEFAULT_API_PORT, INGRESS)
        assert not allowed(manifests, "keti-ray", labels, C.DEFAULT_API_PORT, STRANGER)


def test_the_retrain_submitter_reaches_only_the_training_job_api(manifests, ray_pods) -> None:
    job = find(manifests, "RayJob", "keti-retrain").doc
    src = ("keti-ray", job["spec"]["submitterPodTemplate"]["metadata"]["labels"])
    for where, ns, labels in ray_pods:
        training = "RayCluster" in where
        assert allowed(manifests, ns, labels, 8265, src) == training, where
        assert not allowed(manifests, ns, labels, 6379, src), where
