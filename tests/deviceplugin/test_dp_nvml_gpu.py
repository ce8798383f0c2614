"""On a machine with an NVIDIA GPU: real NVML discovery feeds the plugin (skipped elsewhere)."""

from __future__ import annotations

import pytest

from keti_ray.constants import GPU_RESOURCE


def _nvml_or_skip():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as e:
        pytest.skip(f"no NVIDIA GPU / driver here: {e}")


@pytest.mark.gpu
def test_real_gpus_are_served(kubelet, plugin_dir):
    _nvml_or_skip()
    from keti_ray.deviceplugin.gpu import GpuPlugin
    from keti_ray.deviceplugin.nvml import NvmlBackend

    backend = NvmlBackend()
    gpus = backend.discover()
    assert gpus and all(g.uuid.startswith(("GPU-", "MIG-")) for g in gpus)
    assert all(g.sm_count > 0 and g.memory_mib > 0 for g in gpus)
    assert all(backend.probe(g.uuid) for g in gpus)
    plugin = GpuPlugin(
        backend,
        plugin_dir,
        status_host_dir=str(plugin_dir / "st"),
        limits_host_dir=str(plugin_dir / "limits"),
    )
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: k.capacity(GPU_RESOURCE) == 100 * len(gpus), 10)
        _, resp = kubelet.admit(GPU_RESOURCE, 25)
        assert resp.envs["BLESS_LIMIT_PCT"] == "25"
        assert resp.envs["NVIDIA_VISIBLE_DEVICES"] in {g.uuid for g in gpus}
        u = backend.utilisation(gpus[0].uuid)
        assert 0 <= u.sm_pct <= 100 and u.memory_used_mib >= 0
    finally:
        plugin.stop()
        backend.close()
