"""`keti-ray nodes --from-k8s`: the live node list from the API-server emulator, under the
RBAC rules kuberay/10-rbac.yaml gives the training head (keti-trainer), as a node CSV the
retrain loads."""

from __future__ import annotations

from typer.testing import CliRunner

from keti_ray.cli import _register, app
from keti_ray.cluster import NodeSpec
from keti_ray.trace import load_nodes

from .k8s_cluster import cluster_role_rules, core_api, gpu_node_body

_register()


def uuids(node: str, n: int) -> list[str]:
    return [f"GPU-{node}-{i:04d}" for i in range(n)]


def run(*args: str, token: str | None = "trainer"):
    env = {"KETI_K8S_TOKEN": token} if token else {}
    return CliRunner().invoke(app, ["nodes", *args], env=env)


def test_the_live_gpu_nodes_become_the_retrains_node_csv(apiserver, tmp_path):
    admin = core_api(apiserver.url)
    admin.create_node(gpu_node_body("gpu-b", uuids("b", 4)))
    admin.create_node(gpu_node_body("gpu-a", uuids("a", 2), model="A100"))
    admin.create_node({"metadata": {"name": "cpu-only"}, "status": {"capacity": {"cpu": "8"}}})
    apiserver.authorize("trainer", cluster_role_rules("keti-trainer"))
    out = tmp_path / "run" / "nodes.csv"
    res = run("--from-k8s", "--apiserver", apiserver.url, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "2 nodes, 6 GPUs" in res.output
    # 64 cores, 512Gi allocatable (k8s_cluster.gpu_node_body), GPUs from the agent's annotation
    assert load_nodes(out) == [
        NodeSpec("gpu-a", 64000, 512 * 1024, 2, "A100"),
        NodeSpec("gpu-b", 64000, 512 * 1024, 4, "H200"),
    ]


def test_refusals_name_the_problem_and_write_nothing(apiserver, tmp_path):
    out = tmp_path / "nodes.csv"
    res = run("--out", str(out))
    assert res.exit_code == 2 and "--from-k8s" in res.output
    apiserver.authorize("trainer", cluster_role_rules("keti-trainer"))
    res = run("--from-k8s", "--apiserver", apiserver.url, "--out", str(out))
    assert res.exit_code == 2 and "lists no GPU node" in res.output  # an empty cluster
    res = run("--from-k8s", "--apiserver", apiserver.url, "--out", str(out), token="nobody")
    assert res.exit_code == 2 and "unreadable" in res.output  # 403: no rules for this token
    res = run("--from-k8s", "--apiserver", "ftp://x", "--out", str(out))
    assert res.exit_code == 2 and "accepted" in res.output
    assert not out.exists()
