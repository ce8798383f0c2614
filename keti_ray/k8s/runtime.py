"""The Kubernetes side wired to an allocation service, from the environment.

`KETI_K8S_API` says where the API server is (`in-cluster`, or a URL with the token in
`KETI_K8S_TOKEN`); unset means the allocator is not on Kubernetes. The state actor builds its
service from `initial_nodes()` (the node list before any watch, so the booking store is laid
over the real nodes at start) and then starts the ClusterSync on it. The extender's bind runs
in the Serve replicas (serve/k8s_routes.py) and books through the state actor.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kubernetes import client, config

from keti_ray.cluster import NodeSpec
from keti_ray.constants import ENV_K8S_API, ENV_K8S_TOKEN, K8S_IN_CLUSTER
from keti_ray.k8s.sync import ClusterSync, list_gpu_nodes, node_view

log = logging.getLogger("keti_ray.k8s.runtime")


def api_from_env(environ: dict[str, str] | None = None) -> client.CoreV1Api | None:
    """The CoreV1Api that KETI_K8S_API names, or None when it is unset."""
    env = os.environ if environ is None else environ
    where = env.get(ENV_K8S_API)
    if not where:
        return None
    cfg = client.Configuration()
    if where == K8S_IN_CLUSTER:
        config.load_incluster_config(client_configuration=cfg)
    elif where.startswith(("http://", "https://")):
        cfg.host = where.rstrip("/")
        token = env.get(ENV_K8S_TOKEN)
        if token:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
    else:
        raise ValueError(
            f"{ENV_K8S_API}={where[:80]!r}: accepted: '{K8S_IN_CLUSTER}' or an http(s):// URL"
        )
    return client.CoreV1Api(client.ApiClient(cfg))


def initial_nodes(api: client.CoreV1Api) -> tuple[list[NodeSpec], dict[str, list[str]]]:
    """The modelled nodes and their GPU UUIDs, from one list of the API server's nodes."""
    return node_view(list_gpu_nodes(api))


def start_sync(facade: Any, api: client.CoreV1Api, **kwargs: Any) -> ClusterSync:
    """The ClusterSync on `facade`, nodes synced before pods."""
    return ClusterSync(facade, api, **kwargs).start()


def start_live_mix(service: Any, telemetry_dir: str | None, **kwargs: Any):
    """The live typical-pod mix (keti_ray/k8s/live_mix.py) for filter and prioritize, when
    there is telemetry and the service can take a new mix (`set_typical`); else None."""
    if not telemetry_dir:
        return None
    if not hasattr(service, "set_typical"):
        log.warning(
            "the allocation service has no set_typical(): filter and prioritize keep the "
            "typical-pod mix it was started with"
        )
        return None
    from keti_ray.k8s.live_mix import LiveMix

    return LiveMix(telemetry_dir, service.set_typical, **kwargs).start()
