"""Small builders for hand-made clusters and pods."""

from __future__ import annotations

from keti_ray.cluster import ClusterState, NodeSpec, PodRequest


def pod(name: str, cpu: int = 1000, mem: int = 1024, num: int = 0, milli: int = 0, spec=()):
    return PodRequest(name, cpu, mem, num, milli, frozenset(spec))


def cluster(*nodes: tuple) -> ClusterState:
    """cluster(("a", cpu, mem, gpus, model), ...)"""
    return ClusterState([NodeSpec(*n) for n in nodes])
