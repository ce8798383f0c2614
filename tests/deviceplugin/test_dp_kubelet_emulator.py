"""The kubelet emulator behaves as the API page says (so the plugin tests mean something)."""

from __future__ import annotations

import grpc
import pytest
from kubelet_emulator import KubeletEmulator, is_extended_resource_name

from keti_ray.deviceplugin._gen import api_pb2 as pb
from keti_ray.deviceplugin._gen import api_pb2_grpc as pbg
from keti_ray.deviceplugin.gpu import GpuPlugin
from keti_ray.deviceplugin.server import DevicePluginServer


@pytest.mark.parametrize(
    "name, ok",
    [
        ("keti.re.kr/gpu-pct", True),
        ("example.com/foo", True),
        ("kubernetes.io/foo", False),
        ("node.kubernetes.io/foo", False),
        ("gpu", False),
        ("requests.example.com/foo", False),
        ("Bad_Domain/foo", False),
    ],
)
def test_extended_resource_names(name, ok):
    assert is_extended_resource_name(name) is ok


def _register(kubelet: KubeletEmulator, **fields) -> grpc.RpcError | None:
    req = pb.RegisterRequest(
        version=fields.get("version", "v1beta1"),
        endpoint=fields.get("endpoint", "x.sock"),
        resource_name=fields.get("resource_name", "example.com/x"),
    )
    with grpc.insecure_channel(f"unix://{kubelet.socket}") as ch:
        try:
            pbg.RegistrationStub(ch).Register(req, timeout=15)
        except grpc.RpcError as e:
            return e
    return None


def test_register_rejects_bad_version_and_name(kubelet):
    err = _register(kubelet, version="v1alpha")
    assert err is not None and "Unsupported version" in err.details()
    err = _register(kubelet, resource_name="kubernetes.io/x")
    assert err is not None and "invalid extended resource name" in err.details()
    assert kubelet.endpoints == {}


def test_register_dials_back_so_a_plugin_must_serve_first(kubelet, plugin_dir):
    # nothing listens on x.sock: Register fails after the dial-back attempt
    kubelet_dial = __import__("kubelet_emulator")
    old = kubelet_dial.DIAL_TIMEOUT_S
    kubelet_dial.DIAL_TIMEOUT_S = 0.5
    try:
        err = _register(kubelet, endpoint="x.sock")
    finally:
        kubelet_dial.DIAL_TIMEOUT_S = old
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
    assert kubelet.endpoints == {}


class _Bad(DevicePluginServer):
    resource_name = "kubernetes.io/bad"

    def list_devices(self):
        return []


def test_plugin_keeps_retrying_a_rejected_registration(kubelet, plugin_dir):
    p = _Bad(plugin_dir, "bad.sock")
    p.start()
    try:
        assert kubelet.wait_for(lambda k: len(k.rejections) >= 2, 5)
        assert p.registrations == 0 and not p.registered
    finally:
        p.stop()


def test_reregisters_when_only_kubelet_sock_is_recreated(kubelet, make_gpu_plugin):
    plugin: GpuPlugin
    plugin, _ = make_gpu_plugin(1)
    plugin.start()
    assert kubelet.wait_for(lambda k: k.capacity("keti.re.kr/gpu-pct") == 100, 5)
    assert kubelet.wait_for(lambda k: plugin.registrations == 1, 2)
    kubelet.stop()  # kubelet.sock removed, our socket left alone
    assert plugin.socket_path.is_socket()
    kubelet.start()
    assert kubelet.wait_for(lambda k: k.capacity("keti.re.kr/gpu-pct") == 100, 2)
    assert kubelet.wait_for(lambda k: plugin.registrations == 2, 2)


def test_too_long_socket_path_is_refused_clearly(plugin_dir):
    with pytest.raises(ValueError, match="at most 107: use a shorter plugin_dir"):
        _Bad(plugin_dir / ("d" * 120), "bad.sock")
    with pytest.raises(ValueError, match="socket file name like 'keti-gpu.sock'"):
        _Bad(plugin_dir, "sub/bad.sock")
