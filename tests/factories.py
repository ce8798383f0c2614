"""Small builders for hand-made clusters and pods."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from keti_ray.cluster import ClusterState, NodeSpec, PodRequest


def pod(name: str, cpu: int = 1000, mem: int = 1024, num: int = 0, milli: int = 0, spec=()):
    return PodRequest(name, cpu, mem, num, milli, frozenset(spec))


def cluster(*nodes: tuple) -> ClusterState:
    """cluster(("a", cpu, mem, gpus, model), ...)"""
    return ClusterState([NodeSpec(*n) for n in nodes])


@contextmanager
def local_serve() -> Iterator[int]:
    """A private local Ray (never another session's) with Serve on a free loopback port."""
    import ray
    from ray import serve

    from serve.state import RAY_NAMESPACE

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace=RAY_NAMESPACE,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
