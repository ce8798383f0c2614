"""The GPU decided once: GetPreferredAllocation and Allocate follow the pod's
`keti.re.kr/allocation` annotation, found through the API-server emulator (tests/k8s), with
kubelet's calls coming from the kubelet emulator over real gRPC."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from kubelet_emulator import AdmissionError, KubeletEmulator
from kubernetes import client

from keti_ray.annotations import Allocation, ContainerAllocation, encode_allocation
from keti_ray.constants import ANN_ALLOCATION, GPU_RESOURCE
from keti_ray.deviceplugin.decisions import ApiServerPods, DecisionFinder, watched_finder
from keti_ray.deviceplugin.gpu import GpuPlugin
from keti_ray.deviceplugin.nvml import SimulatedBackend
from keti_ray.deviceplugin.podresources import PodResourcesClient
from keti_ray.deviceplugin.units import parse_device_id

sys.path.insert(0, str(Path(__file__).parents[1] / "k8s"))
from apiserver_emulator import ApiServerEmulator  # noqa: E402

R = GPU_RESOURCE
NODE = "gpu-node-1"
TOKEN = "plugin-token"
# what the plugin may do: list and watch pods (RBAC in kuberay/10-rbac.yaml: exactly this)
PLUGIN_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


@pytest.fixture(params=["watched", "listed"])
def cluster(plugin_dir, request):
    """`watched`: decisions from the plugin's pod watch (a LIST only on a miss), as deployed;
    `listed`: a LIST per lookup."""
    api_emu = ApiServerEmulator(kubelet_grace_s=0.05).start()
    api_emu.authorize(TOKEN, PLUGIN_RULES)
    cfg = client.Configuration()
    cfg.host = api_emu.url
    admin = client.CoreV1Api(client.ApiClient(cfg))
    kubelet = KubeletEmulator(plugin_dir, pod_resources_dir=plugin_dir / "pr").start()
    backend = SimulatedBackend(4, seed=NODE)
    pods = ApiServerPods.from_environment(NODE, host=api_emu.url, token=TOKEN)
    api_emu.plugin_clients = [pods.api_client]
    watcher = None
    if request.param == "watched":
        finder, watcher = watched_finder(NODE, pods)
    else:
        finder = DecisionFinder(NODE, pods.pods, lambda: set())
    pr = PodResourcesClient(plugin_dir / "pr" / "kubelet.sock")
    plugin = GpuPlugin(
        backend,
        plugin_dir,
        status_host_dir=str(plugin_dir / "st"),
        limits_host_dir=str(plugin_dir / "lim"),
        pod_resources=pr,
        decisions=finder,
    )
    plugin.decisions.held = plugin._held_containers
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 400, 5)
    uuids = [g.uuid for g in backend.discover()]
    yield api_emu, admin, kubelet, plugin, uuids
    if watcher is not None:
        watcher.stop()
    plugin.stop()
    pods.close()
    pr.close()
    kubelet.stop()
    api_emu.stop()


def share(gpus: list[str], units: int) -> ContainerAllocation:
    """The decision for a container asking `units` (as the extender books it: CONTRACTS §3)."""
    if units >= 100:
        return ContainerAllocation(gpus=tuple(gpus), milli=1000, sm_pct=100, mechanism="exclusive")
    return ContainerAllocation(gpus=tuple(gpus), milli=units * 10, sm_pct=units, mechanism="mps")


def bind_pod(admin, name: str, containers: dict[str, int], decided: dict[str, list[str]] | None):
    """Create a pod asking `containers` units, annotate the decision, bind it to NODE (as the
    extender's bind does: annotation first, then pods/binding)."""
    spec = {
        "containers": [
            {"name": c, "image": "x", "resources": {"limits": {R: str(u)}}}
            for c, u in containers.items()
        ]
    }
    admin.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": spec})
    if decided is not None:
        alloc = Allocation(
            node=NODE,
            policy="fgd",
            containers={c: share(g, containers[c]) for c, g in decided.items()},
        )
        admin.patch_namespaced_pod(
            name,
            "default",
            {"metadata": {"annotations": {ANN_ALLOCATION: encode_allocation(alloc)}}},
        )
    body = {"metadata": {"name": name}, "target": {"kind": "Node", "name": NODE}}
    admin.create_namespaced_pod_binding(name, "default", body, _preload_content=False)


def _gpus(ids):
    return {parse_device_id(i)[0] for i in ids}


def test_preferred_and_allocate_follow_the_decision_not_local_fgd(cluster):
    api_emu, admin, kubelet, plugin, uuids = cluster
    # local FGD would pack a 30-unit pod onto the half-full GPU 0; the allocator chose GPU 3
    filler, _ = kubelet.admit(R, 50, pod=("default", "filler"))
    free = [50 if u in _gpus(filler) else 100 for u in uuids]
    assert plugin.chooser(free, 30) != 3  # so following the decision is visible
    bind_pod(admin, "p1", {"main": 30}, {"main": [uuids[3]]})
    ids, resp = kubelet.admit(R, 30, pod=("default", "p1"))
    assert _gpus(ids) == {uuids[3]}
    rec = plugin.allocations[resp.annotations["keti.re.kr/allocation-id"]]
    assert rec.decided and rec.pod == "default/p1" and rec.container == "main"
    assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == uuids[3]
    # the filler had no decision: that one fallback (both calls) was counted, no other
    assert plugin.fallbacks == {
        ("GetPreferredAllocation", "no-decision"): 1,
        ("Allocate", "no-decision"): 1,
    }
    # the plugin asked the API server with its own token for exactly what RBAC grants
    verbs = {(c.verb, c.resource) for c in api_emu.calls_by(TOKEN)}
    assert verbs <= {("list", "pods"), ("watch", "pods")} and ("list", "pods") in verbs


def test_each_container_gets_its_own_decided_gpu(cluster):
    _, admin, kubelet, plugin, uuids = cluster
    bind_pod(admin, "two", {"a": 20, "b": 20}, {"a": [uuids[1]], "b": [uuids[2]]})
    ids_a, _ = kubelet.admit(R, 20, pod=("default", "two"), container="a")
    ids_b, _ = kubelet.admit(R, 20, pod=("default", "two"), container="b")
    assert _gpus(ids_a) == {uuids[1]} and _gpus(ids_b) == {uuids[2]}
    assert sum(plugin.fallbacks.values()) == 0


def test_whole_gpus_follow_the_decision(cluster):
    _, admin, kubelet, _, uuids = cluster
    bind_pod(admin, "big", {"main": 200}, {"main": [uuids[1], uuids[3]]})
    ids, _ = kubelet.admit(R, 200, pod=("default", "big"))
    assert _gpus(ids) == {uuids[1], uuids[3]}


def test_allocate_on_other_gpus_than_decided_is_an_error_naming_both(cluster):
    _, admin, kubelet, plugin, uuids = cluster
    bind_pod(admin, "p2", {"main": 10}, {"main": [uuids[2]]})
    wrong = [f"{uuids[0]}-p{u:02d}" for u in range(10)]  # kubelet ignored the preference
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(R, wrong)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert uuids[2] in err.value.details() and uuids[0] in err.value.details()
    assert "default/p2" in err.value.details()
    assert plugin.allocations == {}


def test_a_decided_gpu_without_room_fails_the_admission(cluster):
    _, admin, kubelet, _, uuids = cluster
    kubelet.admit(R, 90, pod=("default", "filler"))  # fallback: lands on some GPU
    full = next(iter(_gpus(kubelet.allocated[R])))
    bind_pod(admin, "late", {"main": 20}, {"main": [full]})
    with pytest.raises(AdmissionError, match=full):
        kubelet.admit(R, 20, pod=("default", "late"))


def test_fallback_is_counted_when_the_api_server_is_down(cluster):
    api_emu, _, kubelet, plugin, _ = cluster
    api_emu.stop()
    # the emulator's stop() leaves its keep-alive connections served by their threads; a
    # crashed API server takes them along, so drop the plugin's pooled connections too
    for api_client in api_emu.plugin_clients:
        api_client.rest_client.pool_manager.clear()
    ids, _ = kubelet.admit(R, 25)
    assert len(ids) == 25
    assert plugin.fallbacks[("GetPreferredAllocation", "apiserver-error")] == 1, plugin.fallbacks
    assert plugin.fallbacks[("Allocate", "apiserver-error")] == 1
    text = __import__("prometheus_client").generate_latest(plugin.registry).decode()
    assert (
        'keti_plugin_decision_fallbacks_total{call="Allocate",reason="apiserver-error"} 1.0' in text
    )


def test_an_annotation_naming_another_node_is_not_followed(cluster):
    _, admin, kubelet, plugin, uuids = cluster
    admin.create_namespaced_pod(
        "default",
        {
            "metadata": {
                "name": "stray",
                "annotations": {
                    ANN_ALLOCATION: encode_allocation(
                        Allocation(
                            node="other-node",
                            policy="fgd",
                            containers={"main": share([uuids[3]], 30)},
                        )
                    )
                },
            },
            "spec": {
                "containers": [{"name": "main", "image": "x", "resources": {"limits": {R: "30"}}}]
            },
        },
    )
    admin.create_namespaced_pod_binding(
        "stray",
        "default",
        {"metadata": {"name": "stray"}, "target": {"kind": "Node", "name": NODE}},
        _preload_content=False,
    )
    kubelet.admit(R, 30, pod=("default", "stray"))
    assert plugin.fallbacks[("Allocate", "no-decision")] == 1


def _annotate(admin, name: str, containers: dict[str, ContainerAllocation]) -> None:
    alloc = Allocation(node=NODE, policy="fgd", containers=containers)
    admin.patch_namespaced_pod(
        name, "default", {"metadata": {"annotations": {ANN_ALLOCATION: encode_allocation(alloc)}}}
    )


def test_a_decision_booking_less_than_asked_is_refused(cluster):
    _, admin, kubelet, plugin, uuids = cluster
    bind_pod(admin, "odd", {"main": 30}, None)
    _annotate(admin, "odd", {"main": share([uuids[1]], 20)})
    with pytest.raises(AdmissionError, match="books 200 milli but the container asks for 30"):
        kubelet.admit(R, 30, pod=("default", "odd"))
    assert plugin.allocations == {}


def test_the_decided_share_is_served_as_booked(cluster):
    """The allocator may book a small request as a larger share (its GPUs' smallest share);
    the plugin serves what was booked, not its own rounding."""
    _, admin, kubelet, plugin, uuids = cluster
    bind_pod(admin, "small", {"main": 5}, None)
    _annotate(admin, "small", {"main": share([uuids[2]], 20)})
    ids, resp = kubelet.admit(R, 5, pod=("default", "small"))
    assert _gpus(ids) == {uuids[2]} and resp.envs["BLESS_LIMIT_PCT"] == "20"
    limits = next(m.host_path for m in resp.mounts if m.container_path == "/etc/vai/limits")
    assert "BLESS_LIMIT_PCT=20\n" in Path(limits).read_text()


def test_pod_watch_relists_after_410_and_sees_later_pods():
    """The plugin's pod cache: a watch started from a resourceVersion the API server has
    compacted away is answered 410 Gone; the watcher drops its version, relists, keeps up."""
    import time

    from kubernetes.client.rest import ApiException

    from keti_ray.deviceplugin.decisions import PodWatcher

    api_emu = ApiServerEmulator(bookmark_interval_s=0.2).start()
    cfg = client.Configuration()
    cfg.host = api_emu.url
    admin = client.CoreV1Api(client.ApiClient(cfg))
    source = ApiServerPods.from_environment(NODE, host=api_emu.url)
    watcher = PodWatcher(source, watch_timeout_s=1)
    try:
        bind_pod(admin, "early", {"main": 10}, None)
        watcher.refresh()
        assert [p["metadata"]["name"] for p in watcher.pods()] == ["early"]
        bind_pod(admin, "missed", {"main": 10}, None)
        api_emu.compact()  # the watcher's version is now older than the history
        try:
            watcher._watch_once()  # one watch from the listed version
        except ApiException as e:  # the client may raise the 410 instead of yielding it
            assert e.status == 410
            watcher._rv = None
        assert watcher._rv is None  # it knows to relist
        watcher.start()
        bind_pod(admin, "late", {"main": 10}, None)
        deadline = time.monotonic() + 5
        names: set[str] = set()
        while names != {"early", "missed", "late"} and time.monotonic() < deadline:
            names = {p["metadata"]["name"] for p in watcher.pods()}
            time.sleep(0.05)
        assert names == {"early", "missed", "late"} and watcher.relists >= 2
        admin.delete_namespaced_pod("early", "default", grace_period_seconds=0)
        deadline = time.monotonic() + 5
        while "early" in names and time.monotonic() < deadline:
            names = {p["metadata"]["name"] for p in watcher.pods()}
            time.sleep(0.05)
        assert names == {"missed", "late"}
    finally:
        watcher.stop()
        source.close()
        api_emu.stop()


def test_the_decided_mechanism_decides_the_mps_mounts(cluster):
    """An MPS share gets the pipe (read-only) and the server's /dev/shm; a share the allocator
    decided for green contexts, and a whole GPU, get neither (no control pipe to reach)."""
    _, admin, kubelet, _plugin, uuids = cluster
    green = ContainerAllocation(gpus=(uuids[1],), milli=300, sm_pct=30, mechanism="green")
    got = {}
    for name, units, decision in (
        ("mps", 30, share([uuids[0]], 30)),
        ("green", 30, green),
        ("whole", 100, share([uuids[2]], 100)),
    ):
        bind_pod(admin, name, {"main": units}, None)
        _annotate(admin, name, {"main": decision})
        _, resp = kubelet.admit(R, units, pod=("default", name))
        got[name] = {m.container_path: (m.host_path, m.read_only) for m in resp.mounts}
    assert got["mps"]["/tmp/nvidia-mps"] == ("/run/keti-ray/mps-pipe", True)
    assert got["mps"]["/dev/shm"] == ("/run/keti-ray/mps-shm", False)
    for name in ("green", "whole"):
        assert "/tmp/nvidia-mps" not in got[name] and "/dev/shm" not in got[name], name
