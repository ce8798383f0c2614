"""Small builders for hand-made clusters and pods."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from keti_ray.cluster import ClusterState, NodeSpec, PodRequest

log = logging.getLogger(__name__)


def pod(name: str, cpu: int = 1000, mem: int = 1024, num: int = 0, milli: int = 0, spec=()):
    return PodRequest(name, cpu, mem, num, milli, frozenset(spec))


def cluster(*nodes: tuple) -> ClusterState:
    """cluster(("a", cpu, mem, gpus, model), ...)"""
    return ClusterState([NodeSpec(*n) for n in nodes])


def tiny_search_settings(nodes_csv: str, **overrides):
    """Policy-search settings for one generation of 4 on one (list, seed) pair, validated on
    one seed, in one process: seconds on a small node list."""
    from keti_ray.rl.search import SearchSettings

    base = dict(
        lists=("default",),
        generations=1,
        popsize=4,
        seeds_per_generation=1,
        validation_seeds=(30_000,),
        workers=1,
        nodes_csv=nodes_csv,
    )
    return SearchSettings(**{**base, **overrides})


# What Ray 2.60's serve.start raises (ray/serve/_private/api.py, serve_start) when the HTTP
# proxy is not ready within its fixed HTTP_PROXY_TIMEOUT (60 s; no setting or env var reads it):
# a plain TimeoutError with this message.
PROXY_NOT_READY = "HTTP proxies not available after"
SERVE_START_ATTEMPTS = 3


def _proxy_not_ready(err: BaseException) -> bool:
    return isinstance(err, TimeoutError) and str(err).startswith(PROXY_NOT_READY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_serve() -> Iterator[int]:
    """A private local Ray (never another session's) with Serve on a free loopback port.

    On an overloaded machine Serve's proxy can miss Ray's fixed 60 s readiness timeout in
    `serve.start`; only that failure is retried (up to SERVE_START_ATTEMPTS, each on a fresh
    local Ray and port, so nothing of a half-started Serve carries over). Any other error is raised
    at once."""
    import ray
    from ray import serve

    from serve.state import RAY_NAMESPACE

    for attempt in range(1, SERVE_START_ATTEMPTS + 1):
        port = _free_port()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            namespace=RAY_NAMESPACE,
            log_to_driver=False,
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            break
        except BaseException as err:
            serve.shutdown()
            ray.shutdown()
            if not _proxy_not_ready(err):
                raise
            if attempt == SERVE_START_ATTEMPTS:
                raise TimeoutError(
                    f"serve.start failed on all {attempt} attempts, each on a fresh local Ray,"
                    f" with: {err} (Serve's proxy missed Ray's fixed readiness timeout; the machine"
                    " is likely overloaded)"
                ) from err
            log.warning(
                "serve.start attempt %d/%d: %s; Serve and Ray shut down, retrying on a fresh Ray",
                attempt,
                SERVE_START_ATTEMPTS,
                err,
            )
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
