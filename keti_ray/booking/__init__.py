"""The allocation service: bookings in SQLite, a policy host, metrics, telemetry off the path.

`AllocationService` is the facade other parts call (CONTRACTS.md section 4).
"""

from keti_ray.booking.policy_host import PolicySpec, load_ppo
from keti_ray.booking.service import (
    AllocateCall,
    AllocationService,
    Conflict,
    Decision,
    NoFit,
    describe,
    pod_key,
)
from keti_ray.booking.store import Booking, BookingStore, StoreError, StoreUnavailable

__all__ = [
    "AllocateCall",
    "AllocationService",
    "Booking",
    "BookingStore",
    "Conflict",
    "Decision",
    "NoFit",
    "PolicySpec",
    "StoreError",
    "StoreUnavailable",
    "describe",
    "load_ppo",
    "pod_key",
]
