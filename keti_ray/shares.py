"""GPU shares: the one conversion module for milli, units, `BLESS_LIMIT_PCT` and SMs.

Four scales meet in keti-ray and every crossing goes through here:

- milli: the cluster model and the allocators, 1000 per GPU (the openb trace's unit);
- units: kubelet's `keti.re.kr/gpu-pct` extended resource, 100 per GPU, one device ID each;
- `BLESS_LIMIT_PCT`: the shim's SM percentage, 1-99 for a share, absent for a whole GPU;
- SMs: what a process actually runs on, which depends on the GPU and the mechanism.

One rounding rule (`served_milli`): a share of one GPU below a whole one is served and booked
in whole units, rounded down, at least `MIN_SHARE_PCT` units. So no share below a whole GPU is ever
uncapped (995 milli is served as 99%, not as 100% = no cap), and because the booked milli of
the shares on a GPU add up to at most 1000, their percentages add up to at most 100 and their
SMs (each rounded down) to at most the GPU's SMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MILLI_PER_GPU = 1000
UNITS_PER_GPU = 100  # keti.re.kr/gpu-pct units per physical GPU
MILLI_PER_UNIT = MILLI_PER_GPU // UNITS_PER_GPU  # 10
MAX_SHARE_PCT = UNITS_PER_GPU - 1  # the largest capped share: 99%
# The smallest share: 5%, the smallest that MPS serves with no more SMs than its proportion on
# every GPU the trace or the data sheet below knows (MPS grants at least 2 SMs; T4: 40 SMs).
# The openb pod lists ask for at least 50 milli, so the rule changes none of their requests.
MIN_SHARE_PCT = 5

# Hopper's granularities, measured on the H200 (../shared/docs/sm-partitioning.md):
# MPS rounds an active-thread percentage down to an even SM count (25% of 132 -> 32);
# a green context is built from 8-SM groups (minSmPartitionSize = smCoscheduledAlignment = 8).
MPS_SM_STEP = 2
GREEN_SM_STEP = 8


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


def served_milli(milli: int) -> int:
    """The milli a request of one GPU's `milli` is served and booked as (the rounding rule).

    1000 stays a whole GPU; below it, whole units rounded down, at least `MIN_SHARE_PCT`:
    5 -> 50, 470 -> 470, 995 -> 990.
    """
    milli = _check_milli(milli)
    if milli == MILLI_PER_GPU:
        return MILLI_PER_GPU
    units = min(MAX_SHARE_PCT, max(MIN_SHARE_PCT, milli_to_units(milli)))
    return units_to_milli(units)


def limit_pct(milli: int) -> int | None:
    """`BLESS_LIMIT_PCT` for a share of one GPU: 1-99, or None for a whole GPU (no cap)."""
    served = served_milli(milli)
    return None if served == MILLI_PER_GPU else milli_to_units(served)


def limit_pct_for_units(units: int) -> int | None:
    """`BLESS_LIMIT_PCT` for a kubelet request of `units` of one GPU (1-100), by the same rule
    as milli (1-4 units are served as the 5% minimum; 100 is the whole GPU)."""
    if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= UNITS_PER_GPU:
        raise ValueError(f"units must be an integer 1-{UNITS_PER_GPU}, got {units!r}")
    return limit_pct(units_to_milli(units))


def granted_sms(pct: int | None, device_sms: int, mechanism: Mechanism | str) -> int:
    """The SMs a process capped at `pct` % runs on, for a GPU of `device_sms` SMs.

    MPS: floor(device_sms * pct / 100) rounded down to even, at least 2; green context:
    rounded down to 8-SM groups, at least one group; whole GPU (None or EXCLUSIVE): all.
    Under MPS the SMs of a GPU's shares add up to at most its SMs (`MIN_SHARE_PCT`); a green
    share smaller than one group still gets one, but green processes time-slice rather than
    run side by side, so there the sum bounds no concurrent use.
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
    return min(device_sms, max(step, raw - raw % step))


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
    served = served_milli(milli)
    pct = limit_pct(served)
    mechanism = Mechanism(mechanism)
    if pct is None:
        mechanism = Mechanism.EXCLUSIVE
    elif mechanism is Mechanism.EXCLUSIVE:
        raise ValueError(f"a share of {served} milli cannot be exclusive; mechanism: mps or green")
    sms = granted_sms(pct, device_sms, mechanism) if device_sms else None
    return Share(served, pct, mechanism, sms, device_sms)
