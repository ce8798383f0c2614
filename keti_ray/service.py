"""The allocation service; it lives in `keti_ray.booking` (store, policy host, metrics).

Kept so `from keti_ray.service import AllocationService` goes on working.
"""

from keti_ray.booking import (
    AllocateCall,
    AllocationService,
    Booking,
    BookingStore,
    Conflict,
    Decision,
    NoFit,
    PolicySpec,
    StoreError,
    StoreUnavailable,
    describe,
    load_ppo,
    pod_key,
)

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
