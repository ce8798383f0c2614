"""GPU share units, milli, and the device-ID format of the GPU plugin.

Two scales meet here and are kept apart on purpose: kubelet counts `keti.re.kr/gpu-pct`
units (100 per GPU, one device ID per unit); the cluster model and allocators count milli
(1000 per GPU).  Every crossing goes through `units_to_milli` / `milli_to_units`.
"""

from __future__ import annotations

import re

from keti_ray.constants import GPU_UNITS_PER_DEVICE

MILLI_PER_GPU = 1000
MILLI_PER_UNIT = MILLI_PER_GPU // GPU_UNITS_PER_DEVICE  # 10
MAX_DEVICE_ID_LEN = 63  # kubelet's limit on Device.ID

_ID_RE = re.compile(r"^(?P<uuid>.+)-p(?P<unit>\d{2})$")


def units_to_milli(units: int) -> int:
    """SM-percent units (100 per GPU) -> milli (1000 per GPU)."""
    return int(units) * MILLI_PER_UNIT


def milli_to_units(milli: int) -> int:
    """Milli (1000 per GPU) -> whole SM-percent units, rounding down (a unit is never split)."""
    return int(milli) // MILLI_PER_UNIT


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
