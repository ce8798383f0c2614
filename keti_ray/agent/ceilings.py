"""Which MPS server ceilings add a guarantee on this node, from its allocations.

A ceiling set on the MPS control daemon caps every client of every server, whatever the
client's env says (measured on the H200: `set_default_active_thread_percentage 25` held a
client asking for 100 at 32 SMs).  But it is one value per server (the thread percentage even
covers every device), not per client, so the only safe ceiling is the largest share a client
on the node may hold:
- active thread percentage: the largest `BLESS_LIMIT_PCT` booked on the node; 100 (no
  ceiling) when a whole-GPU allocation exists (it may use MPS too, and must not be capped) or
  nothing is shared.  It then stops a process that escaped the shim (say a static binary the
  loader's preload does not reach) from taking more than the largest share;
- pinned device memory, per GPU (MPS takes a limit per device): the largest memory quota of
  the shares on that GPU; the GPU's whole memory where it is not shared or a share has no
  quota.
The per-pod share itself still comes from the client's env, which the shim sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from keti_ray.agent.mps import MpsCeilings
from keti_ray.deviceplugin.allocations import GpuAllocation
from keti_ray.deviceplugin.nvml import GpuInfo
from keti_ray.quantity import memory_mib
from keti_ray.shares import UNITS_PER_GPU


def ceilings_for(allocations: Iterable[GpuAllocation], gpus: Iterable[GpuInfo]) -> MpsCeilings:
    gpus = list(gpus)
    allocs = list(allocations)
    shared = [a for a in allocs if a.units < UNITS_PER_GPU and a.bless_limit_pct is not None]
    whole = [a for a in allocs if a.units >= UNITS_PER_GPU or a.bless_limit_pct is None]
    thread = 100 if whole or not shared else max(a.bless_limit_pct for a in shared)
    pinned: dict[int, int] = {}
    for g in gpus:
        on_gpu = [a for a in shared if g.uuid in a.gpu_uuids]
        if not on_gpu or any(a.memory_limit is None for a in on_gpu):
            pinned[g.index] = g.memory_mib
        else:
            pinned[g.index] = max(memory_mib(a.memory_limit, "memory_limit") for a in on_gpu)
    return MpsCeilings(thread_pct=int(thread), pinned_mib=pinned)
