"""SM count when NVML does not expose the multiprocessor attribute (seen on the lent H200)."""

from __future__ import annotations

from types import SimpleNamespace

from keti_ray.deviceplugin.nvml import _sm_count


class FakeNVMLError(Exception):
    pass


def fake_nvml(name: bytes, attributes_supported: bool):
    def attributes(_h):
        if not attributes_supported:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(multiprocessorCount=98)

    return SimpleNamespace(
        NVMLError=FakeNVMLError,
        nvmlDeviceGetAttributes=attributes,
        nvmlDeviceGetName=lambda _h: name,
    )


def test_attribute_wins_when_supported():
    assert _sm_count(fake_nvml(b"NVIDIA H200", True), object()) == 98


def test_data_sheet_fallback_by_name():
    assert _sm_count(fake_nvml(b"NVIDIA H200", False), object()) == 132
    assert _sm_count(fake_nvml(b"NVIDIA H100 PCIe", False), object()) == 114
    assert _sm_count(fake_nvml(b"NVIDIA H100 80GB HBM3", False), object()) == 132
    assert _sm_count(fake_nvml(b"Some Future GPU", False), object()) == 0
