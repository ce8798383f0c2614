"""Simulated GPU nodes for a local cluster when no real one is at hand."""

from __future__ import annotations

from keti_ray.cluster import NodeSpec

# A small mixed fleet: (model, GPUs, cpu_milli, memory_mib), cycled over the node count.
SIM_NODE_TYPES = (
    ("H100", 8, 128_000, 1_048_576),
    ("A100", 4, 64_000, 524_288),
    ("T4", 2, 32_000, 131_072),
    ("H100", 8, 128_000, 1_048_576),
)


def simulated_nodes(count: int = 4) -> list[NodeSpec]:
    """`count` simulated GPU nodes named sim-node-00, sim-node-01, ..."""
    if count < 1:
        raise ValueError(f"sim node count must be >= 1, got {count}")
    return [
        NodeSpec(f"sim-node-{i:02d}", cpu, mem, gpus, model)
        for i, (model, gpus, cpu, mem) in (
            (i, SIM_NODE_TYPES[i % len(SIM_NODE_TYPES)]) for i in range(count)
        )
    ]
