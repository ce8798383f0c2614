"""NPU discovery from a fake sysfs/dev tree and from NPU_DEVICE_COUNT; the plugin via kubelet."""

from __future__ import annotations

import grpc
import pytest

from keti_ray.constants import NPU_RESOURCE
from keti_ray.deviceplugin.npu import NpuPlugin, discover_npus

R = NPU_RESOURCE


@pytest.fixture
def fake_tree(plugin_dir):
    """Two accel-class NPUs (NUMA 0 and 1) plus one vendor node and a control node."""
    sys_root, dev_root = plugin_dir / "sys", plugin_dir / "dev"
    for i, numa in ((0, "0"), (1, "1")):
        d = sys_root / "class/accel" / f"accel{i}" / "device"
        d.mkdir(parents=True)
        (d / "numa_node").write_text(numa + "\n")
        (d / "vendor").write_text("0x1eff\n")
        (dev_root / "accel").mkdir(parents=True, exist_ok=True)
        (dev_root / "accel" / f"accel{i}").touch()
    (dev_root / "rbln0").touch()
    (dev_root / "rbln_ctl").touch()  # no instance number: not an NPU
    return sys_root, dev_root


def test_discovery_from_fake_sysfs(fake_tree):
    sys_root, dev_root = fake_tree
    npus = discover_npus(sys_root, dev_root, env={})
    assert [(n.id, n.kind, n.numa_node) for n in npus] == [
        ("accel0", "accel", 0),
        ("accel1", "accel", 1),
        ("rbln0", "rbln", None),
    ]
    assert npus[0].dev_path == str(dev_root / "accel/accel0") and npus[0].vendor == "0x1eff"


def test_emulated_devices_from_npu_device_count(plugin_dir):
    empty = plugin_dir / "empty"
    assert [n.id for n in discover_npus(empty, empty, env={"NPU_DEVICE_COUNT": "3"})] == [
        "npu-emu-0",
        "npu-emu-1",
        "npu-emu-2",
    ]
    assert len(discover_npus(empty, empty, env={})) == 1  # default 1
    with pytest.raises(ValueError, match="NPU_DEVICE_COUNT must be a whole number >= 0"):
        discover_npus(empty, empty, env={"NPU_DEVICE_COUNT": "two"})


def test_npu_plugin_lists_allocates_and_follows_device_node(kubelet, plugin_dir, fake_tree):
    sys_root, dev_root = fake_tree
    plugin = NpuPlugin(discover_npus(sys_root, dev_root, env={}), plugin_dir, health_interval_s=0.1)
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: k.capacity(R) == 3, 5)
        assert kubelet.devices(R)["accel1"].topology.nodes[0].ID == 1
        ids, resp = kubelet.admit(R, 2)
        assert ids == ["accel0", "accel1"]
        assert [(d.host_path, d.container_path, d.permissions) for d in resp.devices] == [
            (str(dev_root / "accel/accel0"), str(dev_root / "accel/accel0"), "rw"),
            (str(dev_root / "accel/accel1"), str(dev_root / "accel/accel1"), "rw"),
        ]
        assert resp.envs["NPU_VISIBLE_DEVICES"] == "accel0,accel1"
        _, resp = kubelet.admit(R, 1)
        assert resp.envs["RBLN_DEVICES"] == "0"
        (dev_root / "rbln0").unlink()  # the device node vanishes -> Unhealthy within a poll
        assert kubelet.wait_for(lambda k: k.devices(R)["rbln0"].health == "Unhealthy", 1.0)
        with pytest.raises(grpc.RpcError) as err:
            kubelet.allocate(R, ["rbln0"])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        (dev_root / "rbln0").touch()
        assert kubelet.wait_for(lambda k: k.devices(R)["rbln0"].health == "Healthy", 1.0)
        with pytest.raises(grpc.RpcError) as err:
            kubelet.allocate(R, ["npu9"])
        assert "unknown NPU device IDs" in err.value.details()
    finally:
        plugin.stop()


def test_emulated_npu_plugin_allocates_without_device_specs(kubelet, plugin_dir):
    empty = plugin_dir / "none"
    plugin = NpuPlugin(discover_npus(empty, empty, env={"NPU_DEVICE_COUNT": "2"}), plugin_dir)
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: k.capacity(R) == 2, 5)
        _, resp = kubelet.admit(R, 1)
        assert list(resp.devices) == [] and resp.envs["NPU_VISIBLE_DEVICES"] == "npu-emu-0"
    finally:
        plugin.stop()
