"""The per-node agent: device plugins, the MPS control daemon and telemetry, as a Ray actor.

`mps` manages nvidia-cuda-mps-control, `telemetry` samples the GPUs and hands records to a
sink, `node_agent` is the actor, `fleet` starts one actor on every node that carries the
node resource.
"""
