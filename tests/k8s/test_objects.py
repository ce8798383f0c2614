"""Node and Pod objects read into the allocator's terms: what makes a node modelled, and how a
container's keti.re.kr/gpu-pct becomes GPUs and a share (bad input names the field)."""

from __future__ import annotations

import pytest

from keti_ray.constants import ANN_GPU_SM_COUNT, ANN_GPU_UUIDS, GPU_RESOURCE
from keti_ray.k8s.objects import ObjectError, gpu_node, gpu_pod

from .k8s_cluster import gpu_node_body, gpu_pod_body

UUIDS = [f"GPU-{i:08d}-0000-0000-0000-000000000000" for i in range(4)]


def test_a_published_node_is_modelled():
    n = gpu_node(gpu_node_body("n", UUIDS))
    assert n.spec.num_gpus == 4 and n.spec.model == "H200" and n.spec.cpu_milli == 64000
    assert n.spec.memory_mib == 512 * 1024 and n.uuids == tuple(UUIDS) and n.sm_count == 132
    assert n.reason is None


def test_a_node_without_keti_gpus_is_not_ours():
    body = gpu_node_body("cpu", UUIDS)
    del body["metadata"]["annotations"][ANN_GPU_UUIDS]
    del body["status"]["allocatable"][GPU_RESOURCE]
    assert gpu_node(body) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b["metadata"]["annotations"].pop(ANN_GPU_UUIDS), "has not published"),
        (lambda b: b["metadata"]["annotations"].update({ANN_GPU_UUIDS: "GPU-a,GPU-a"}), "twice"),
        (lambda b: b["status"]["allocatable"].update({GPU_RESOURCE: "900"}), "more than the 4"),
        (lambda b: b["status"]["allocatable"].update({GPU_RESOURCE: "lots"}), "quantity"),
        (lambda b: b["metadata"]["annotations"].update({ANN_GPU_SM_COUNT: "x"}), "sm-count"),
    ],
)
def test_inconsistent_nodes_are_not_modelled_and_say_why(change, reason):
    body = gpu_node_body("n", UUIDS)
    change(body)
    n = gpu_node(body)
    assert n.spec is None and reason in n.reason


def test_unhealthy_gpus_keep_the_node_modelled_and_degraded():
    body = gpu_node_body("n", UUIDS)
    body["status"]["allocatable"][GPU_RESOURCE] = "300"
    n = gpu_node(body)
    assert n.spec.num_gpus == 4 and n.healthy_gpus == 3 and "1 of 4" in n.reason


def test_per_gpu_lists_that_differ_give_no_single_number():
    body = gpu_node_body("n", UUIDS)
    body["metadata"]["annotations"][ANN_GPU_SM_COUNT] = "132,132,114,132"
    assert gpu_node(body).sm_count is None and gpu_node(body).spec is not None


def test_pod_requests_per_container():
    body = gpu_pod_body("p", [25, 200])
    body["spec"]["containers"].append({"name": "sidecar", "image": "x",
                                       "resources": {"requests": {"cpu": "1"}}})  # fmt: skip
    pod = gpu_pod({**body, "metadata": {**body["metadata"], "uid": "u1"}})
    assert pod.booking_keys() == {"c0": "default/p/c0", "c1": "default/p/c1"}
    reqs = pod.requests()
    assert (reqs["default/p/c0"].num_gpu, reqs["default/p/c0"].gpu_milli) == (1, 250)
    assert (reqs["default/p/c1"].num_gpu, reqs["default/p/c1"].gpu_milli) == (2, 1000)
    assert reqs["default/p/c0"].cpu_milli == 250 + 1000  # the sidecar's CPU goes with c0
    single = gpu_pod(gpu_pod_body("q", 40))
    assert single.booking_keys() == {"main": "default/q"}


@pytest.mark.parametrize(
    ("value", "message"),
    [("150", "multiple of 100"), ("2.5", "positive integer"), ("0", "positive integer"),
     ("abc", "not a Kubernetes quantity")],
)  # fmt: skip
def test_bad_gpu_requests_name_the_container_and_field(value, message):
    body = gpu_pod_body("p", 10)
    body["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] = value
    with pytest.raises(ObjectError) as info:
        gpu_pod(body)
    assert "containers[main]" in str(info.value) and message in str(info.value)


def test_a_pod_without_gpu_requests_is_not_ours():
    body = gpu_pod_body("p", 10)
    del body["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE]
    assert gpu_pod(body) is None
