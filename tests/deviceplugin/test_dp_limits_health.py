"""Allocate's limits for every share, fatal vs recoverable XIDs, and records reconciled through
kubelet's PodResources API, all through the kubelet emulator over real gRPC."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from kubelet_emulator import KubeletEmulator

from keti_ray.constants import (
    ENV_BLESS_LIMIT_PCT,
    ENV_VAI_DEVICE_SM_COUNT,
    GPU_RESOURCE,
    LIMITS_CONTAINER_PATH,
)
from keti_ray.deviceplugin.podresources import PodResourcesClient
from keti_ray.deviceplugin.units import parse_device_id

R = GPU_RESOURCE


def _limits(resp) -> dict[str, str]:
    path = next(m.host_path for m in resp.mounts if m.container_path == LIMITS_CONTAINER_PATH)
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def test_every_unit_value_maps_to_its_own_cap_and_only_100_is_uncapped(kubelet, make_gpu_plugin):
    """CONTRACTS §1: a share is served in whole units, at least the GPU's smallest share (MPS
    never grants fewer than 8 SMs: 7% of the simulated GPU's 132); 100 units is the whole GPU,
    the only value without a cap."""
    plugin, _ = make_gpu_plugin(1, memory_limit="none")
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    uncapped = []
    for units in range(1, 101):
        ids, resp = kubelet.admit(R, units)
        env, lim = dict(resp.envs), _limits(resp)
        if ENV_BLESS_LIMIT_PCT not in env:
            uncapped.append(units)
            assert ENV_BLESS_LIMIT_PCT not in lim
        else:
            want = str(max(7, units))
            assert env[ENV_BLESS_LIMIT_PCT] == want, units
            assert lim[ENV_BLESS_LIMIT_PCT] == want, units
        assert env[ENV_VAI_DEVICE_SM_COUNT] == lim[ENV_VAI_DEVICE_SM_COUNT] == "132"
        kubelet.release(R, ids)
    assert uncapped == [100]


def test_device_sm_count_falls_back_to_the_data_sheet(kubelet, make_gpu_plugin):
    """NVML answered NOT_SUPPORTED for the SM attribute on the lent H200 (sm_count 0)."""
    plugin, _ = make_gpu_plugin(1, sm_count=0, name="NVIDIA H200", memory_mib=143771)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    _, resp = kubelet.admit(R, 25)
    assert resp.envs[ENV_VAI_DEVICE_SM_COUNT] == "132"
    assert _limits(resp) == {
        "BLESS_LIMIT_PCT": "25",
        "VAI_MEMORY_LIMIT": f"{143771 * 25 // 100}Mi",
        "VAI_DEVICE_SM_COUNT": "132",
    }


def test_limits_files_are_read_only_on_the_host(kubelet, make_gpu_plugin, plugin_dir):
    plugin, _ = make_gpu_plugin(1)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    _, resp = kubelet.admit(R, 40)
    for m in resp.mounts:
        if m.container_path in (LIMITS_CONTAINER_PATH, "/etc/ld.so.preload"):
            assert m.read_only
            assert Path(m.host_path).stat().st_mode & 0o222 == 0  # no write bit for anyone


@pytest.mark.parametrize("xid", [48, 79, 95])
def test_fatal_xid_holds_until_a_reset_even_across_a_plugin_restart(kubelet, make_gpu_plugin, xid):
    plugin, backend = make_gpu_plugin(2, recovery_probes=2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    sick = backend.discover()[0].uuid
    backend.fail(sick, xid=xid)
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 1.0)
    backend.recover(sick)  # the probe passes again, but no reset happened
    time.sleep(0.6)  # 6 probe rounds at 0.1 s: more than enough to recover a recoverable XID
    assert kubelet.capacity(R) == 100
    assert plugin.health_state()[sick]["fatal_xid"] == xid
    plugin.stop()

    again, _ = make_gpu_plugin(2, recovery_probes=2)  # same node: same state directory
    again.backend = backend  # the same GPUs (the simulator holds the reset token)
    again.probe_once()
    assert not again.gpu_healthy(sick) and again.health_state()[sick]["fatal_xid"] == xid
    backend.reset(sick)
    for _ in range(3):
        again.probe_once()
    assert again.gpu_healthy(sick) and again.health_state()[sick]["fatal_xid"] is None


def test_recoverable_xid_recovers_after_the_probes_pass(kubelet, make_gpu_plugin):
    plugin, backend = make_gpu_plugin(1, recovery_probes=3, probe_interval_s=3600)
    uuid = backend.discover()[0].uuid
    plugin.on_xid(uuid, 94)  # contained ECC error: RESTART_APP in the catalogue
    assert not plugin.gpu_healthy(uuid)
    plugin.probe_once()
    plugin.probe_once()
    assert not plugin.gpu_healthy(uuid)  # two passes are not three
    plugin.probe_once()
    assert plugin.gpu_healthy(uuid)
    plugin.on_xid(uuid, 13)  # an application's fault: ignored
    assert plugin.gpu_healthy(uuid)


def test_pod_resources_emulator_lists_allocations_and_healthy_allocatable(plugin_dir):
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import SimulatedBackend

    k = KubeletEmulator(plugin_dir, pod_resources_dir=plugin_dir / "pr").start()
    backend = SimulatedBackend(2, seed="pr-node")
    plugin = GpuPlugin(
        backend, plugin_dir, status_host_dir=str(plugin_dir / "st"),
        limits_host_dir=str(plugin_dir / "lim"), probe_interval_s=0.1,
    )  # fmt: skip
    client = PodResourcesClient(plugin_dir / "pr" / "kubelet.sock")
    try:
        plugin.start()
        assert k.wait_for(lambda k: k.capacity(R) == 200, 5)
        ids, _ = k.admit(R, 30, pod=("ns1", "p1"), container="c")
        (h,) = client.holdings(R)
        assert (h.pod_key, h.container, h.device_ids) == ("ns1/p1", "c", frozenset(ids))
        from keti_ray.deviceplugin._gen import podresources_pb2 as prpb

        one = client._stub().Get(prpb.GetPodResourcesRequest(pod_name="p1", pod_namespace="ns1"))
        assert sorted(one.pod_resources.containers[0].devices[0].device_ids) == sorted(ids)
        with pytest.raises(grpc.RpcError) as err:
            client._stub().Get(prpb.GetPodResourcesRequest(pod_name="nope", pod_namespace="ns1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(client.allocatable(R)) == 200
        backend.fail(backend.discover()[1].uuid, xid=79)
        assert k.wait_for(lambda k: k.capacity(R) == 100, 1.0)
        assert len(client.allocatable(R)) == 100  # unhealthy devices are not allocatable
        k.remove_pod("ns1", "p1")
        assert client.holdings(R) == []
    finally:
        client.close()
        plugin.stop()
        k.stop()


def test_records_on_an_unhealthy_gpu_are_reconciled_through_pod_resources(plugin_dir):
    """Kubelet never offers an Unhealthy GPU's units again, so only PodResources can tell
    that the pod on it ended; its record, status directory and limits file then go."""
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import SimulatedBackend

    k = KubeletEmulator(plugin_dir, pod_resources_dir=plugin_dir / "pr").start()
    backend = SimulatedBackend(2, seed="rec-node")
    client = PodResourcesClient(plugin_dir / "pr" / "kubelet.sock")
    plugin = GpuPlugin(
        backend, plugin_dir, status_host_dir=str(plugin_dir / "st"),
        limits_host_dir=str(plugin_dir / "lim"), probe_interval_s=0.1, pod_resources=client,
        reconcile_interval_s=3600,
    )  # fmt: skip
    try:
        plugin.start()
        assert k.wait_for(lambda k: k.capacity(R) == 200, 5)
        ids_a, resp_a = k.admit(R, 40, pod=("ns", "on-sick"))
        ids_b, resp_b = k.admit(R, 100, pod=("ns", "on-good"))
        a = resp_a.annotations["keti.re.kr/allocation-id"]
        b = resp_b.annotations["keti.re.kr/allocation-id"]
        sick = parse_device_id(ids_a[0])[0]
        assert sick != parse_device_id(ids_b[0])[0]
        out = plugin.reconcile()
        assert sorted(out["named"]) == sorted([a, b]) and out["ended"] == []
        assert plugin.allocations[a].pod == "ns/on-sick"
        backend.fail(sick, xid=79)
        assert k.wait_for(lambda k: k.capacity(R) == 100, 1.0)
        k.remove_pod("ns", "on-sick")
        assert plugin.reconcile()["ended"] == []  # still inside the grace period
        out = plugin.reconcile(now=time.time() + 60)
        assert out["ended"] == [a] and set(plugin.allocations) == {b}
        assert not (plugin_dir / "st" / a).exists() and not (plugin_dir / "lim" / a).exists()
        assert (plugin_dir / "lim" / b / "limits").is_file()
    finally:
        plugin.stop()
        client.close()
        k.stop()


def test_reconcile_survives_kubelet_being_down(plugin_dir):
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import SimulatedBackend

    client = PodResourcesClient(plugin_dir / "nowhere.sock", timeout_s=0.5)
    plugin = GpuPlugin(
        SimulatedBackend(1, seed="x"), plugin_dir, status_host_dir=str(plugin_dir / "st"),
        limits_host_dir=str(plugin_dir / "lim"), pod_resources=client,
    )  # fmt: skip
    with pytest.raises(grpc.RpcError):
        plugin.reconcile()
    client.close()
