"""`keti-ray nodes --from-k8s --out FILE`: the live node list as a node CSV.

Why: a retrain must train and evaluate on the nodes the allocator models now, and on
Kubernetes those come from the API server (keti_ray/k8s), not from a CSV the allocator
loads. This writes them (GPU nodes the allocator can model: the same `list_gpu_nodes` and
`node_view` the allocator's first node list uses) in the CSV form `keti-ray retrain --nodes`
and `load_nodes` read, so the retrain RayJob records the node list of its run beside it.
The service account needs `list` on nodes, nothing else (kuberay/10-rbac.yaml keti-trainer).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from keti_ray.cli import app, fail
from keti_ray.constants import ENV_K8S_API, K8S_IN_CLUSTER


@app.command("nodes")
def nodes_command(
    out: Path = typer.Option(
        ..., help="Node CSV to write (sn, cpu_milli, memory_mib, gpu, model)."
    ),
    from_k8s: bool = typer.Option(
        False, "--from-k8s", help="Read the nodes from the API server (the only source so far)."
    ),
    apiserver: str = typer.Option(
        None,
        help=f"'{K8S_IN_CLUSTER}' (the pod's service account) or an http(s):// URL "
        f"(default ${ENV_K8S_API}, else {K8S_IN_CLUSTER}); a token from $KETI_K8S_TOKEN.",
    ),
) -> None:
    """Write the live GPU node list (as the allocator models it) to a node CSV."""
    from keti_ray.k8s.runtime import api_from_env, initial_nodes
    from keti_ray.rl.retrain import write_nodes_csv

    if not from_k8s:
        fail("--from-k8s: give the source of the node list (the API server is the only one)")
    env = dict(os.environ)
    env[ENV_K8S_API] = apiserver or env.get(ENV_K8S_API) or K8S_IN_CLUSTER
    try:
        api = api_from_env(env)
        assert api is not None
        nodes, _ = initial_nodes(api)
    except Exception as exc:  # config, connection, auth: say which, write nothing
        fail(f"--from-k8s: nodes from {env[ENV_K8S_API]!r} unreadable: {type(exc).__name__}: "
             f"{str(exc).strip()[:300]}")  # fmt: skip
    if not nodes:
        fail(f"--from-k8s: the API server ({env[ENV_K8S_API]}) lists no GPU node keti-ray models")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    write_nodes_csv(nodes, tmp)
    os.replace(tmp, out)  # a reader never sees half a list
    typer.echo(f"{len(nodes)} nodes, {sum(n.num_gpus for n in nodes)} GPUs -> {out}")
