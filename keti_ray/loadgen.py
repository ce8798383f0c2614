"""A workload generator for a running allocator: pods arrive, live a while and leave, with a
mix that can shift between phases (for example from whole GPUs to 25% shares).
Bounded in count and time; talks only to the URL it is given (a local allocator).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np

# Named mixes: (cpu_milli, num_gpu, gpu_milli) shapes with weights.
MIXES: dict[str, list[tuple[tuple[int, int, int], float]]] = {
    "whole": [((8000, 1, 1000), 0.7), ((16000, 2, 1000), 0.2), ((4000, 0, 0), 0.1)],
    "quarter": [((2000, 1, 250), 0.8), ((4000, 1, 500), 0.1), ((4000, 0, 0), 0.1)],
    "mixed": [
        ((8000, 1, 1000), 0.4),
        ((2000, 1, 250), 0.3),
        ((4000, 1, 470), 0.2),
        ((4000, 0, 0), 0.1),
    ],
}


@dataclass(frozen=True)
class Phase:
    mix: str
    pods: int

    @classmethod
    def parse(cls, text: str) -> list[Phase]:
        """`whole:200,quarter:400` -> two phases."""
        phases = []
        for part in text.split(","):
            name, _, count = part.partition(":")
            if name not in MIXES or not count.isdigit() or int(count) < 1:
                raise ValueError(
                    f"--phases: {part!r} must be MIX:COUNT with MIX one of {', '.join(MIXES)}"
                )
            phases.append(cls(name, int(count)))
        return phases


@dataclass
class LoadResult:
    sent: int = 0
    placed: int = 0
    no_fit: int = 0
    failed: int = 0  # anything but 200/409: what a policy switch must never cause
    released: int = 0


def run_load(
    url: str,
    phases: Sequence[Phase],
    seed: int = 0,
    lifetime: int = 40,
    headers: dict | None = None,
    deadline_s: float = 300.0,
) -> LoadResult:
    """Offer the phases' pods in order; each placed pod is released `lifetime` arrivals later."""
    rng = np.random.default_rng(seed)
    result = LoadResult()
    live: list[tuple[int, str]] = []
    stop_at = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, headers=headers or {}, timeout=30) as client:
        step = 0
        for phase in phases:
            shapes, weights = zip(*MIXES[phase.mix], strict=True)
            p = np.array(weights) / sum(weights)
            for _ in range(phase.pods):
                if time.monotonic() > stop_at:
                    return result
                while live and live[0][0] <= step:
                    _, name = heapq.heappop(live)
                    if client.post("/release", json={"pod": name}).status_code == 200:
                        result.released += 1
                cpu, num, milli = shapes[int(rng.choice(len(shapes), p=p))]
                name = f"lg-{seed}-{step}"
                body = {
                    "pod": {
                        "name": name,
                        "cpu_milli": cpu,
                        "memory_mib": 4096,
                        "num_gpu": num,
                        "gpu_milli": milli,
                    }
                }
                status = client.post("/allocate", json=body).status_code
                result.sent += 1
                if status == 200:
                    result.placed += 1
                    heapq.heappush(
                        live, (step + int(rng.integers(lifetime // 2, lifetime * 2)), name)
                    )
                elif status == 409:
                    result.no_fit += 1
                else:
                    result.failed += 1
                step += 1
    return result
