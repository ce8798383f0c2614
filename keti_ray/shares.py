"""PROVISIONAL copy of CONTRACTS §1 (the lead's keti_ray/shares.py replaces it on merge).

The one conversion module for milli, units, BLESS_LIMIT_PCT and SMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MILLI_PER_GPU = 1000
UNITS_PER_GPU = 100
MILLI_PER_UNIT = 10

_SM_BY_MODEL = (
    ("H100 PCIe", 114),
    ("H100", 132),
    ("H200", 132),
    ("GH200", 132),
    ("A100", 108),
    ("A30", 56),
    ("A10", 72),
    ("L40S", 142),
    ("L4", 58),
    ("T4", 40),
    ("V100", 80),
)


class Mechanism(StrEnum):
    MPS = "mps"
    GREEN = "green"
    EXCLUSIVE = "exclusive"


def units_to_milli(units: int) -> int:
    return int(units) * MILLI_PER_UNIT


def milli_to_units(milli: int) -> int:
    return int(milli) // MILLI_PER_UNIT


def served_milli(milli: int) -> int:
    if not 1 <= milli <= MILLI_PER_GPU:
        raise ValueError(f"milli must be 1..{MILLI_PER_GPU}, got {milli}")
    if milli == MILLI_PER_GPU:
        return milli
    return max(MILLI_PER_UNIT, milli // MILLI_PER_UNIT * MILLI_PER_UNIT)


def limit_pct(milli: int) -> int | None:
    served = served_milli(milli)
    return None if served == MILLI_PER_GPU else served // MILLI_PER_UNIT


def granted_sms(pct: int | None, device_sms: int, mechanism: Mechanism) -> int:
    if pct is None or mechanism == Mechanism.EXCLUSIVE:
        return device_sms
    raw = device_sms * pct // 100
    if mechanism == Mechanism.GREEN:
        return max(8, raw // 8 * 8)
    return max(2, raw // 2 * 2)


def device_sm_count(model: str) -> int | None:
    return next((n for key, n in _SM_BY_MODEL if key in model), None)


@dataclass(frozen=True)
class Share:
    milli: int
    pct: int | None
    mechanism: Mechanism
    sms: int | None
    device_sms: int | None

    def as_dict(self) -> dict:
        return {
            "milli": self.milli,
            "sm_pct": self.pct,
            "sms": self.sms,
            "device_sms": self.device_sms,
            "mechanism": str(self.mechanism),
        }


def share_for(milli: int, device_sms: int | None, mechanism: Mechanism) -> Share:
    served = served_milli(milli)
    pct = limit_pct(served)
    sms = None if device_sms is None else granted_sms(pct, device_sms, mechanism)
    return Share(served, pct, mechanism, sms, device_sms)
