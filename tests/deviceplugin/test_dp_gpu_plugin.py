"""The GPU plugin against the kubelet emulator, over real gRPC on real Unix sockets."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from kubelet_emulator import AdmissionError

from keti_ray.constants import (
    ENV_BLESS_LIMIT_PCT,
    ENV_LD_PRELOAD,
    ENV_MPS_PIPE_DIRECTORY,
    ENV_NVIDIA_VISIBLE_DEVICES,
    ENV_VAI_DEVICE_SM_COUNT,
    ENV_VAI_MEMORY_LIMIT,
    ENV_VAI_STATUS_DIR,
    GPU_RESOURCE,
    LD_SO_PRELOAD_CONTAINER_PATH,
    LIMITS_CONTAINER_PATH,
    MPS_PIPE_DIR,
    SHIM_CONTAINER_PATH,
    SHIM_LIBRARY_NAME,
)
from keti_ray.deviceplugin.units import parse_device_id
from keti_ray.podenv import CONTAINER_STATUS_DIR

R = GPU_RESOURCE


def _gpu_of(ids):
    return {parse_device_id(i)[0] for i in ids}


def test_registers_and_lists_every_unit(kubelet, make_gpu_plugin):
    plugin, backend = make_gpu_plugin(2, numa_nodes=2)
    plugin.start()
    assert kubelet.wait_for(lambda k: len(k.devices(R)) == 200, 5)
    ep = kubelet.endpoints[R]
    assert ep.options.get_preferred_allocation_available
    assert ep.socket == plugin.socket_path and plugin.socket_path.is_socket()
    devs = kubelet.devices(R)
    gpus = backend.discover()
    for g in gpus:
        ids = [f"{g.uuid}-p{u:02d}" for u in range(100)]
        assert all(devs[i].health == "Healthy" for i in ids)
        assert [n.ID for n in devs[ids[0]].topology.nodes] == [g.numa_node]
    assert {g.numa_node for g in gpus} == {0, 1}
    assert max(len(i) for i in devs) <= 63


def test_serves_first_and_registers_once_kubelet_appears(plugin_dir, make_gpu_plugin):
    from kubelet_emulator import KubeletEmulator

    plugin, _ = make_gpu_plugin(1)
    plugin.start()
    time.sleep(0.3)  # kubelet not there yet: the plugin keeps retrying
    assert plugin.registrations == 0 and plugin.socket_path.is_socket()
    k = KubeletEmulator(plugin_dir).start()
    try:
        assert k.wait_for(lambda k: len(k.devices(R)) == 100, 3)
        assert k.wait_for(lambda k: plugin.registrations == 1, 2)
    finally:
        k.stop()


def test_health_flip_reaches_the_stream_within_1s_and_recovers(kubelet, make_gpu_plugin):
    plugin, backend = make_gpu_plugin(2, recovery_probes=2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    sick = backend.discover()[1].uuid
    t0 = time.monotonic()
    backend.fail(sick, xid=94)  # contained ECC error: the catalogue's RESTART_APP, recoverable
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 1.0)
    assert time.monotonic() - t0 < 1.0
    unhealthy = {i for i, d in kubelet.devices(R).items() if d.health == "Unhealthy"}
    assert _gpu_of(unhealthy) == {sick} and len(unhealthy) == 100
    # the last message was a FULL list, not a delta
    assert len(kubelet.endpoints[R].updates[-1][1]) == 200
    # an unhealthy GPU is neither preferred nor allocatable
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(R, sorted(unhealthy)[:10])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    backend.recover(sick)
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 2.0)


def test_application_xid_does_not_mark_unhealthy(kubelet, make_gpu_plugin):
    plugin, backend = make_gpu_plugin(1)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    uuid = backend.discover()[0].uuid
    backend.fail(uuid, xid=13)  # application fault: XID ignored, but the probe fails...
    backend.recover(uuid)  # ...only if it is still failing at probe time; here it is not
    time.sleep(0.5)
    # no message on the stream ever showed the GPU Unhealthy
    updates = kubelet.endpoints[R].updates
    assert updates and all(h == "Healthy" for _, hs in updates for h in hs.values())


@pytest.mark.parametrize("units", [25, 100, 200])
def test_allocate_env_and_mounts(kubelet, make_gpu_plugin, plugin_dir, units):
    plugin, backend = make_gpu_plugin(2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    ids, resp = kubelet.admit(R, units)
    assert len(ids) == units
    gpus = _gpu_of(ids)
    assert len(gpus) == max(1, units // 100)
    env = dict(resp.envs)
    assert env[ENV_LD_PRELOAD] == SHIM_CONTAINER_PATH
    assert env[ENV_LD_PRELOAD].endswith(SHIM_LIBRARY_NAME)
    assert set(env[ENV_NVIDIA_VISIBLE_DEVICES].split(",")) == gpus
    assert env[ENV_MPS_PIPE_DIRECTORY] == MPS_PIPE_DIR
    assert env[ENV_VAI_STATUS_DIR] == CONTAINER_STATUS_DIR
    mem = backend.discover()[0].memory_mib
    if units < 100:
        assert env[ENV_BLESS_LIMIT_PCT] == str(units)
        assert env[ENV_VAI_MEMORY_LIMIT] == f"{mem * units // 100}Mi"
    else:
        assert ENV_BLESS_LIMIT_PCT not in env and ENV_VAI_MEMORY_LIMIT not in env
    assert env[ENV_VAI_DEVICE_SM_COUNT] == "132"  # the simulated H100's SMs
    mounts = {m.container_path: m for m in resp.mounts}
    preload = mounts[LD_SO_PRELOAD_CONTAINER_PATH]
    assert preload.read_only and Path(preload.host_path).read_text() == SHIM_CONTAINER_PATH + "\n"
    lim = mounts[LIMITS_CONTAINER_PATH]
    assert lim.read_only and lim.host_path.startswith(str(plugin_dir / "limits"))
    got = {}
    for line in Path(lim.host_path).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            got[key] = value
    want = {"VAI_DEVICE_SM_COUNT": "132"}
    if units < 100:
        want |= {"BLESS_LIMIT_PCT": str(units), "VAI_MEMORY_LIMIT": f"{mem * units // 100}Mi"}
    assert got == want
    shim = mounts[SHIM_CONTAINER_PATH]
    assert shim.read_only and shim.host_path == str(plugin_dir / "libvai_accelerator.so")
    if units < 100:  # an MPS share: the pipe read-only (connect only), the server's shm rw
        assert mounts[MPS_PIPE_DIR].host_path == str(plugin_dir / "mps")
        assert mounts[MPS_PIPE_DIR].read_only
        assert mounts["/dev/shm"].host_path == str(plugin_dir / "mps-shm")
        assert not mounts["/dev/shm"].read_only
    else:  # whole GPUs: no MPS, so neither the control pipe nor the server's shared memory
        assert MPS_PIPE_DIR not in mounts and "/dev/shm" not in mounts
    status = mounts[CONTAINER_STATUS_DIR]
    assert status.host_path.startswith(str(plugin_dir / "status")) and not status.read_only
    assert Path(status.host_path).is_dir()
    assert resp.annotations["keti.re.kr/gpu-pct"] == str(units)
    rec = plugin.allocations[resp.annotations["keti.re.kr/allocation-id"]]
    assert rec.units == units and set(rec.gpu_uuids) == gpus


@pytest.mark.parametrize("limit, want", [("512Mi", "512Mi"), ("20Gi", "20480Mi")])
def test_configured_memory_limit(kubelet, make_gpu_plugin, limit, want):
    plugin, _ = make_gpu_plugin(1, memory_limit=limit)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    _, resp = kubelet.admit(R, 10)
    assert resp.envs[ENV_VAI_MEMORY_LIMIT] == want


def test_bad_memory_limit_names_the_accepted_form(make_gpu_plugin):
    with pytest.raises(ValueError, match="memory_limit must be .*'20Gi'"):
        make_gpu_plugin(1, memory_limit="20 gigs")


def test_straddling_set_is_rejected_and_changes_nothing(kubelet, make_gpu_plugin, plugin_dir):
    plugin, backend = make_gpu_plugin(2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    a, b = (g.uuid for g in backend.discover())
    ids = [f"{a}-p{u:02d}" for u in range(30)] + [f"{b}-p{u:02d}" for u in range(20)]
    before = set((plugin_dir / "status").glob("*")) if (plugin_dir / "status").exists() else set()
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(R, ids)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "straddle" in err.value.details() and a in err.value.details()
    assert plugin.allocations == {}
    after = set((plugin_dir / "status").glob("*")) if (plugin_dir / "status").exists() else set()
    assert after == before


@pytest.mark.parametrize(
    "make_ids, why",
    [
        (lambda a, b: [f"{a}-p{u:02d}" for u in range(100)] + [f"{b}-p00"], "whole GPUs"),
        (lambda a, b: [f"{a}-p00", f"{a}-p00"], "repeats"),
        (lambda a, b: ["GPU-nope-p00"], "does not have"),
        (lambda a, b: [f"{a}-x1"], "<gpu-uuid>-p<NN>"),
        (lambda a, b: [], "empty"),
    ],
)
def test_invalid_sets_are_rejected_with_a_reason(kubelet, make_gpu_plugin, make_ids, why):
    plugin, backend = make_gpu_plugin(2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    a, b = (g.uuid for g in backend.discover())
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(R, make_ids(a, b))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in err.value.details()
    assert plugin.allocations == {}


def test_preferred_allocation_packs_one_gpu_and_whole_gpus_above_100(kubelet, make_gpu_plugin):
    plugin, backend = make_gpu_plugin(3)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 300, 5)
    ids1, _ = kubelet.admit(R, 60)
    (g1,) = _gpu_of(ids1)
    # 40 more units fit on the GPU already in use: packing keeps the other GPUs whole
    ids2, _ = kubelet.admit(R, 40)
    assert _gpu_of(ids2) == {g1}
    # 200 units need two wholly free GPUs: exactly the two untouched ones
    ids3, _ = kubelet.admit(R, 200)
    assert _gpu_of(ids3) == {g.uuid for g in backend.discover()} - {g1}
    with pytest.raises(AdmissionError, match="available"):
        kubelet.admit(R, 1)
    kubelet.release(R, ids2)
    with pytest.raises(grpc.RpcError) as err:
        kubelet.preferred(R, 150)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiple of 100" in str(
        err.value.details()
    )


def test_preferred_size_too_big_for_any_one_gpu(kubelet, make_gpu_plugin):
    plugin, _ = make_gpu_plugin(2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    kubelet.admit(R, 60)
    kubelet.admit(R, 60)
    with pytest.raises(grpc.RpcError) as err:
        kubelet.preferred(R, 50)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no single GPU has 50 free units" in err.value.details()


def test_reregisters_within_1s_of_kubelet_restart(kubelet, make_gpu_plugin):
    plugin, _ = make_gpu_plugin(1)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    n = len(kubelet.registrations)
    up = kubelet.restart()
    assert kubelet.wait_for(lambda k: len(k.registrations) > n, 1.0)
    assert kubelet.registrations[-1][0] - up < 1.0
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 2)
    assert plugin.socket_path.is_socket()
    _, resp = kubelet.admit(R, 50)  # the new connection serves Allocate
    assert resp.envs[ENV_BLESS_LIMIT_PCT] == "50"


def test_restart_with_kubelet_down_for_a_while(kubelet, make_gpu_plugin):
    plugin, _ = make_gpu_plugin(1)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    up = kubelet.restart(down_s=0.5)
    assert kubelet.wait_for(lambda k: k.registrations[-1][0] >= up, 1.0)


def test_stop_removes_socket_and_kubelet_sees_stream_end(kubelet, make_gpu_plugin):
    plugin, _ = make_gpu_plugin(1)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    plugin.stop()
    assert not plugin.socket_path.exists()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 0, 2)


def test_preferred_gpu_is_fgds_choice(kubelet, make_gpu_plugin):
    """Free units [100, 60, 10, 100], 10 wanted: FGD (not best fit) decides; compare with the
    allocator itself on the same state, in milli."""
    from keti_ray.allocators import make_allocator
    from keti_ray.cluster import ClusterState, NodeSpec, PodRequest

    plugin, backend = make_gpu_plugin(4)
    assert plugin.chooser_name == "fgd"
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 400, 5)
    gpus = backend.discover()
    free = [100, 60, 10, 100]
    kubelet.allocated[R] = {
        f"{g.uuid}-p{u:02d}" for g, f in zip(gpus, free, strict=True) for u in range(100 - f)
    }
    chosen = _gpu_of(kubelet.preferred(R, 10))
    state = ClusterState.from_specs([NodeSpec("n", 10**9, 10**9, 4, gpus[0].name)])
    for i, f in enumerate(free):
        state.gpu_free[0, i] = f * 10
    want = make_allocator("fgd", seed=0).place(state, PodRequest("p", 0, 0, 1, 100))
    assert chosen == {gpus[want.gpus[0]].uuid}
    assert want.gpus[0] != 2  # best fit would take GPU 2 (exactly 10 free); FGD does not


def test_allocations_survive_a_plugin_restart_and_end_when_units_return(
    kubelet, make_gpu_plugin, plugin_dir
):
    plugin, _ = make_gpu_plugin(2)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 200, 5)
    ids, resp = kubelet.admit(R, 30)
    aid = resp.annotations["keti.re.kr/allocation-id"]
    record = plugin_dir / "status" / ".allocations" / f"{aid}.json"
    assert record.is_file() and (plugin_dir / "status" / aid).is_dir()
    assert (plugin_dir / "limits" / aid / "limits").is_file()
    # the record is not inside the directory the pod mounts
    assert not any(m.host_path == str(record.parent) for m in resp.mounts)
    plugin.stop()

    again, _ = make_gpu_plugin(2)  # same node, same status directory
    assert set(again.allocations) == {aid} and again.allocations[aid].units == 30
    again.start()
    assert kubelet.wait_for(lambda k: again.registrations >= 1 and k.capacity(R) == 200, 5)
    kubelet.release(R, ids)  # the pod ended: kubelet offers its units again
    kubelet.preferred(R, 10)
    assert again.allocations == {} and not record.exists()
    assert not (plugin_dir / "status" / aid).exists()
    assert not (plugin_dir / "limits" / aid).exists()  # its limits file went with it


def test_a_probe_that_raises_marks_unhealthy_and_the_watcher_survives(kubelet, plugin_dir):
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import SimulatedBackend

    class Flaky(SimulatedBackend):
        broken = True

        def probe(self, uuid):
            if self.broken:
                raise AttributeError("old bindings without this NVML call")
            return super().probe(uuid)

    backend = Flaky(1, seed="flaky")
    plugin = GpuPlugin(
        backend, plugin_dir, status_host_dir=str(plugin_dir / "st"), probe_interval_s=0.1,
        recovery_probes=2, limits_host_dir=str(plugin_dir / "lim"),
    )  # fmt: skip
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R)) == 100 and k.capacity(R) == 0, 3)
        backend.broken = False
        assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 2)
    finally:
        plugin.stop()


@pytest.mark.parametrize(
    ("kw", "pipe_ro"),
    [({"mps_mounts": "rw"}, False), ({"mps_mounts": "none"}, None), ({"mechanism": "green"}, None)],
)
def test_mps_mounts_follow_the_node_setting(kubelet, make_gpu_plugin, plugin_dir, kw, pipe_ro):
    """rw where a driver's client must write; none where the node runs no MPS; a green-context
    node's shares are no MPS clients, so they get neither mount."""
    plugin, _ = make_gpu_plugin(1, **kw)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity(R) == 100, 5)
    _, resp = kubelet.admit(R, 30)
    mounts = {m.container_path: m for m in resp.mounts}
    if pipe_ro is None:
        assert MPS_PIPE_DIR not in mounts and "/dev/shm" not in mounts
    else:
        assert mounts[MPS_PIPE_DIR].read_only is pipe_ro
        assert mounts["/dev/shm"].host_path == str(plugin_dir / "mps-shm")


def test_bad_mps_mounts_names_the_accepted_forms(make_gpu_plugin):
    with pytest.raises(ValueError, match=r"mps_mounts must be one of \('ro', 'rw', 'none'\)"):
        make_gpu_plugin(1, mps_mounts="readonly")
