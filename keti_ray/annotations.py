"""PROVISIONAL copy of CONTRACTS §3 (the lead's keti_ray/annotations.py replaces it on merge)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ContainerAllocation:
    gpus: tuple[str, ...]
    milli: int
    sm_pct: int | None
    sms: int | None
    mechanism: str


@dataclass(frozen=True)
class Allocation:
    node: str
    policy: str
    containers: dict[str, ContainerAllocation] = field(default_factory=dict)


def encode_allocation(alloc: Allocation) -> str:
    return json.dumps(
        {
            "node": alloc.node,
            "policy": alloc.policy,
            "containers": {
                n: {
                    "gpus": list(c.gpus),
                    "milli": c.milli,
                    "sm_pct": c.sm_pct,
                    "sms": c.sms,
                    "mechanism": c.mechanism,
                }
                for n, c in alloc.containers.items()
            },
        },
        sort_keys=True,
    )


def decode_allocation(text: str) -> Allocation:
    try:
        d = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"allocation annotation is not JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("node"), str):
        raise ValueError("allocation annotation: 'node' must be a string")
    cs = d.get("containers")
    if not isinstance(cs, dict) or not cs:
        raise ValueError("allocation annotation: 'containers' must be a non-empty object")
    out = {}
    for name, c in cs.items():
        gpus = c.get("gpus") if isinstance(c, dict) else None
        if not isinstance(gpus, list) or not gpus or not all(isinstance(g, str) for g in gpus):
            raise ValueError(f"allocation annotation: containers.{name}.gpus must list GPU UUIDs")
        milli = c.get("milli")
        if not isinstance(milli, int) or milli < 1:
            raise ValueError(f"allocation annotation: containers.{name}.milli must be an int >= 1")
        out[name] = ContainerAllocation(
            tuple(gpus), milli, c.get("sm_pct"), c.get("sms"), str(c.get("mechanism", "mps"))
        )
    return Allocation(d["node"], str(d.get("policy", "")), out)
