"""The device-ID format of the GPU plugin (one ID per `keti.re.kr/gpu-pct` unit).

The unit/milli conversions are `keti_ray.shares`' (re-exported here for the plugin's callers).
"""

from __future__ import annotations

import re

from keti_ray.constants import GPU_UNITS_PER_DEVICE
from keti_ray.shares import MILLI_PER_GPU, MILLI_PER_UNIT, milli_to_units, units_to_milli

__all__ = [
    "MILLI_PER_GPU",
    "MILLI_PER_UNIT",
    "device_id",
    "milli_to_units",
    "parse_device_id",
    "units_to_milli",
]

MAX_DEVICE_ID_LEN = 63  # kubelet's limit on Device.ID

_ID_RE = re.compile(r"^(?P<uuid>.+)-p(?P<unit>\d{2})$")


def device_id(gpu_uuid: str, unit: int) -> str:
    """The device ID of one unit of a GPU: `<gpu-uuid>-p<NN>`, NN in 00..99."""
    if not 0 <= unit < GPU_UNITS_PER_DEVICE:
        raise ValueError(f"unit must be in 0..{GPU_UNITS_PER_DEVICE - 1}, got {unit}")
    dev_id = f"{gpu_uuid}-p{unit:02d}"
    if len(dev_id) > MAX_DEVICE_ID_LEN:
        raise ValueError(
            f"device ID {dev_id!r} is {len(dev_id)} characters; kubelet accepts at most "
            f"{MAX_DEVICE_ID_LEN} (GPU UUID too long)"
        )
    return dev_id


def parse_device_id(dev_id: str) -> tuple[str, int]:
    """`<gpu-uuid>-p<NN>` -> (gpu_uuid, unit); ValueError naming the accepted form otherwise."""
    m = _ID_RE.match(dev_id)
    if m is None:
        raise ValueError(f"device ID {dev_id!r} is not of the form '<gpu-uuid>-p<NN>' (NN 00..99)")
    return m.group("uuid"), int(m.group("unit"))
