"""GPU shares: the one conversion module for milli, units, `BLESS_LIMIT_PCT` and SMs.

Four scales meet in keti-ray and every crossing goes through here:

- milli: the cluster model and the allocators, 1000 per GPU (the openb trace's unit);
- units: kubelet's `keti.re.kr/gpu-pct` extended resource, 100 per GPU, one device ID each;
- `BLESS_LIMIT_PCT`: the shim's SM percentage, 1-99 for a share, absent for a whole GPU;
- SMs: what a process actually runs on, which depends on the GPU and the mechanism.

One rounding rule (`served_milli`): a share of one GPU below a whole one is served and booked
in whole units, rounded down, and at least the GPU's smallest share (`min_share_pct`). So no
share below a whole GPU is ever uncapped (995 milli is served as 99%, not as 100% = no cap).
Because a GPU's booked milli add up to at most 1000, their percentages add up to at most 100,
and because no share is smaller than the SM floor of the mechanism (8 SMs, measured), their
SMs (each rounded down to the driver's step) add up to at most the GPU's SMs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

MILLI_PER_GPU = 1000
UNITS_PER_GPU = 100  # keti.re.kr/gpu-pct units per physical GPU
MILLI_PER_UNIT = MILLI_PER_GPU // UNITS_PER_GPU  # 10
MAX_SHARE_PCT = UNITS_PER_GPU - 1  # the largest capped share: 99%
# The smallest share where the GPU's SM count is unknown (the openb pod lists ask for at least
# 50 milli, so the rule changes none of their requests).
MIN_SHARE_PCT = 5

# Hopper's granularities, measured on the H200 (../shared/docs/sm-partitioning.md and
# native/vai_accelerator/RESULTS.md): MPS rounds an active-thread percentage down to an even SM
# count (25% of 132 -> 32) and never grants fewer than 8 SMs (1-6% -> 8); a green context is
# built from 8-SM groups (minSmPartitionSize = smCoscheduledAlignment = 8). The 8-SM floor is
# assumed for other GPUs too: over-estimating it only makes their smallest share larger.
MPS_SM_STEP = 2
GREEN_SM_STEP = 8
MIN_SMS = 8


class Mechanism(StrEnum):
    """How a share is enforced on the node: MPS thread percentage, a green context without
    MPS (caps, but processes time-slice), or the whole GPU for one pod."""

    MPS = "mps"
    GREEN = "green"
    EXCLUSIVE = "exclusive"


def _check_milli(milli: int) -> int:
    if isinstance(milli, bool) or not isinstance(milli, int):
        raise ValueError(f"gpu_milli must be an integer 1-{MILLI_PER_GPU}, got {milli!r}")
    if not 1 <= milli <= MILLI_PER_GPU:
        raise ValueError(f"gpu_milli must be 1-{MILLI_PER_GPU}, got {milli}")
    return milli


def units_to_milli(units: int) -> int:
    """SM-percent units (100 per GPU) -> milli (1000 per GPU)."""
    return int(units) * MILLI_PER_UNIT


def milli_to_units(milli: int) -> int:
    """Milli -> whole SM-percent units, rounding down (a unit is never split)."""
    return int(milli) // MILLI_PER_UNIT


def min_share_pct(device_sms: int | None = None) -> int:
    """The smallest share of a GPU of `device_sms` SMs that gets no more SMs than its
    proportion (8-SM floor): 7% on 132 SMs, 8% on 108, 20% on a T4's 40; 5% when unknown."""
    if not device_sms:
        return MIN_SHARE_PCT
    return max(MIN_SHARE_PCT, min(MAX_SHARE_PCT, -(-100 * MIN_SMS // device_sms)))


def served_milli(milli: int, device_sms: int | None = None) -> int:
    """The milli a request of one GPU's `milli` is served and booked as (the rounding rule).

    1000 stays a whole GPU; below it, whole units rounded down, at least `min_share_pct` of the
    GPU (of the smallest GPU that may host it): 5 -> 50 (70 on 132 SMs), 470 -> 470, 995 -> 990.
    """
    milli = _check_milli(milli)
    if milli == MILLI_PER_GPU:
        return MILLI_PER_GPU
    units = min(MAX_SHARE_PCT, max(min_share_pct(device_sms), milli_to_units(milli)))
    return units_to_milli(units)


def smallest_gpu_sms(models: Iterable[str]) -> int | None:
    """The fewest SMs among GPU models with a known count: the GPU whose minimum share a
    cluster-wide request must meet to fit anywhere (None when no model is known)."""
    counts = [c for c in (device_sm_count(m) for m in models) if c]
    return min(counts) if counts else None


def limit_pct(milli: int) -> int | None:
    """`BLESS_LIMIT_PCT` for a share of one GPU: 1-99, or None for a whole GPU (no cap)."""
    served = served_milli(milli)
    return None if served == MILLI_PER_GPU else milli_to_units(served)


def limit_pct_for_units(units: int, device_sms: int | None = None) -> int | None:
    """`BLESS_LIMIT_PCT` for a kubelet request of `units` of one GPU (1-100), by the same rule
    as milli (below the GPU's smallest share -> that share; 100 is the whole GPU)."""
    if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= UNITS_PER_GPU:
        raise ValueError(f"units must be an integer 1-{UNITS_PER_GPU}, got {units!r}")
    return limit_pct(served_milli(units_to_milli(units), device_sms))


def granted_sms(pct: int | None, device_sms: int, mechanism: Mechanism | str) -> int:
    """The SMs a process capped at `pct` % runs on, for a GPU of `device_sms` SMs.

    MPS: floor(device_sms * pct / 100) rounded down to even; green context: rounded down to
    8-SM groups; both at least 8 SMs (measured); whole GPU (None or EXCLUSIVE): all of them.
    """
    mechanism = Mechanism(mechanism)
    if device_sms <= 0:
        raise ValueError(f"device_sms must be positive, got {device_sms}")
    if pct is None or mechanism is Mechanism.EXCLUSIVE:
        return device_sms
    if not 1 <= pct <= MAX_SHARE_PCT:
        raise ValueError(f"pct must be 1-{MAX_SHARE_PCT} or None, got {pct}")
    step = MPS_SM_STEP if mechanism is Mechanism.MPS else GREEN_SM_STEP
    raw = device_sms * pct // 100
    return min(device_sms, max(MIN_SMS, raw - raw % step))


# Multiprocessors per GPU from the vendors' data sheets, for the cluster's GPU models and for
# drivers whose NVML does not report the attribute on a whole GPU (the lent H200's did not).
# Matched as a substring of the model or NVML name, most specific first.
SM_COUNT_BY_NAME: tuple[tuple[str, int], ...] = (
    ("H100 PCIe", 114),
    ("GH200", 132),
    ("H100", 132),
    ("H200", 132),
    ("A100", 108),
    ("A30", 56),
    ("A10", 72),
    ("L40S", 142),
    ("L4", 58),
    ("T4", 40),
    ("V100", 80),
    ("P100", 56),
)


def device_sm_count(model: str) -> int | None:
    """Data-sheet SMs of a GPU model or NVML name (`V100M32`, `NVIDIA H200`), None if unknown."""
    return next((count for key, count in SM_COUNT_BY_NAME if key in model), None)


@dataclass(frozen=True)
class Share:
    """What one pod gets of one GPU: booked milli, the shim's cap, and the SMs it runs on."""

    milli: int
    pct: int | None
    mechanism: Mechanism
    sms: int | None
    device_sms: int | None

    def as_dict(self) -> dict:
        return {
            "milli": self.milli,
            "sm_pct": self.pct if self.pct is not None else UNITS_PER_GPU,
            "sms": self.sms,
            "device_sms": self.device_sms,
            "mechanism": str(self.mechanism),
        }


def share_for(milli: int, device_sms: int | None, mechanism: Mechanism | str) -> Share:
    """The share a request of `milli` of one GPU is served as, on a GPU of `device_sms` SMs
    (None when the model's SM count is unknown: then `sms` is None too)."""
    served = served_milli(milli, device_sms)
    pct = limit_pct(served)
    mechanism = Mechanism(mechanism)
    if pct is None:
        mechanism = Mechanism.EXCLUSIVE
    elif mechanism is Mechanism.EXCLUSIVE:
        raise ValueError(f"a share of {served} milli cannot be exclusive; mechanism: mps or green")
    sms = granted_sms(pct, device_sms, mechanism) if device_sms else None
    return Share(served, pct, mechanism, sms, device_sms)
