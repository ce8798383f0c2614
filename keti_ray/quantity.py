"""The one parser of memory quantities ("512Mi", "20Gi", "4096") for Python.

Kubernetes' own rules (`kubernetes.utils.parse_quantity`: binary Ki/Mi/Gi/Ti/Pi/Ei, decimal
k/M/G/T/P/E, plain numbers), so a quantity means the same here as in a pod spec.  Values must
be whole, positive bytes.  The shim's file format (CONTRACTS §2) is narrower: what we write
there comes from `mib_text`, always `<int>Mi`, and `shim_memory_bytes` checks a value against
the form the shim's C parser (native/vai_accelerator/src/config.c) accepts.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from kubernetes.utils.quantity import parse_quantity

MIB = 1024 * 1024
ACCEPTED = "a positive quantity like 512Mi, 20Gi, 1G or a number of bytes"
SHIM_FORM = re.compile(r"^[0-9]{1,19}(Ki|Mi|Gi|Ti)?$")  # what config.c parses, nothing more
SHIM_ACCEPTED = (
    "a positive number of bytes, optionally with Ki, Mi, Gi or Ti (e.g. 536870912, 512Mi, 20Gi)"
)
MAX_SHIM_BYTES = 2**64 - 1  # config.c holds the limit in a uint64


def memory_bytes(value: str | int, field: str = "memory") -> int:
    """Bytes of a memory quantity; ValueError naming `field` and the accepted form."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be {ACCEPTED}, got {value!r}")
    try:
        q = parse_quantity(value)
    except (ValueError, TypeError, InvalidOperation):
        raise ValueError(f"{field} must be {ACCEPTED}, got {value!r}") from None
    if q <= 0 or q != q.to_integral_value():
        raise ValueError(f"{field} must be {ACCEPTED} (whole, positive bytes), got {value!r}")
    return int(q)


def memory_mib(value: str | int, field: str = "memory") -> int:
    """Whole MiB of a memory quantity, rounded down (at least 1)."""
    return max(1, memory_bytes(value, field) // MIB)


def mib_text(mib: int | Decimal) -> str:
    """The form the shim reads: `<int>Mi`."""
    n = int(mib)
    if n < 1:
        raise ValueError(f"a memory limit must be at least 1 MiB, got {mib!r}")
    return f"{n}Mi"


def shim_memory_bytes(value: str, field: str = "VAI_MEMORY_LIMIT") -> int:
    """Bytes of a memory limit in the shim's form: digits with an optional Ki/Mi/Gi/Ti and
    at most 2^64-1 bytes (no decimal units, no fractions: config.c refuses them, so a value
    this accepts is one the shim reads the same). ValueError naming `field` otherwise."""
    problem = ValueError(f"{field} must be {SHIM_ACCEPTED}, got {value!r}")
    if not isinstance(value, str) or not SHIM_FORM.match(value):
        raise problem
    try:
        n = memory_bytes(value, field)
    except ValueError:
        raise problem from None
    if n > MAX_SHIM_BYTES:
        raise problem
    return n
