"""`keti-ray up`: a local Ray cluster, simulated GPU nodes and the served allocator;
`keti-ray allocate`: a small client for it."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import typer

from keti_ray.cli import app, fail
from keti_ray.constants import DEFAULT_API_PORT, ENV_API_PORT, ENV_TOKEN


@app.command("up")
def up_command(
    nodes: Path = typer.Option(None, help="Node list CSV (e.g. the openb GPU nodes)."),
    sim_nodes: int = typer.Option(4, help="Simulated GPU nodes when --nodes is not given."),
    pods: Path = typer.Option(None, help="Pod list CSV whose shapes become FGD's typical pods."),
    port: int = typer.Option(
        None, help=f"HTTP port (default ${ENV_API_PORT} or {DEFAULT_API_PORT})."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    state: Path = typer.Option(
        None,
        "--state",
        "--journal",
        help="Booking store (SQLite) file; a restart comes back with every booking. An old "
        "JSON journal at this path is imported once (--journal is the old name).",
    ),
    telemetry: Path = typer.Option(None, help="Telemetry store folder (allocator events)."),
    replicas: int = typer.Option(1, help="Serve replicas of the allocator."),
    exit_after: float = typer.Option(None, hidden=True, help="Stop after this many seconds."),
) -> None:
    """Start Ray, the simulated GPU fleet and the allocator; Ctrl-C stops everything."""
    port = port or int(os.environ.get(ENV_API_PORT, DEFAULT_API_PORT))
    if sim_nodes < 1:
        fail(f"--sim-nodes must be >= 1, got {sim_nodes}")
    if nodes is not None and not nodes.is_file():
        fail(f"--nodes: {nodes} is not a file")
    if state is not None:
        _check_state(state)
    import ray
    from ray import serve

    from serve.app import AllocatorIngress
    from serve.state import ClusterSource

    source = ClusterSource(
        nodes_csv=str(nodes) if nodes else None,
        sim_nodes=None if nodes else sim_nodes,
        pods_csv=str(pods) if pods else None,
        state=str(state) if state else None,
        telemetry_dir=str(telemetry) if telemetry else None,
    )
    typer.echo("starting Ray ...", err=True)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace="keti-ray")
    stop = threading.Event()
    try:
        fleet = _start_fleet(source)
        serve.start(http_options={"host": host, "port": port})
        deployment = AllocatorIngress.options(num_replicas=replicas)
        serve.run(deployment.bind(source), name="keti-allocator", route_prefix="/")
        url = f"http://{host}:{port}"
        auth = f' -H "Authorization: Bearer ${ENV_TOKEN}"' if os.environ.get(ENV_TOKEN) else ""
        typer.echo(f"keti-ray allocator ready at {url}  ({fleet})")
        typer.echo(
            f"  curl -s{auth} -X POST {url}/allocate -H 'content-type: application/json' \\\n"
            '    -d \'{"pod": {"name": "demo", "cpu_milli": 4000, "memory_mib": 8192, '
            '"num_gpu": 1, "gpu_milli": 250}}\''
        )
        typer.echo(f"  curl -s{auth} {url}/partition    |  curl -s {url}/health")
        typer.echo(f"  open {url}/ui  (operator's view{'; sign in: the token' if auth else ''})")
        typer.echo("Ctrl-C stops everything.")
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait(timeout=exit_after)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping ...", err=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _check_state(path: Path) -> None:
    """Open the booking store once before Ray starts: an unreadable one stops here, with a
    message naming the file and the problem (not a failed deployment later)."""
    from keti_ray.booking import BookingStore, StoreError
    from keti_ray.booking.legacy import read_legacy_journal

    try:
        store = BookingStore(path)
        if store.legacy_journal and store.meta("journal_imported") is None:
            read_legacy_journal(store.legacy_journal)  # imported by the service once it starts
        store.close()
    except StoreError as exc:
        fail(f"--state: {exc}")
    except OSError as exc:
        fail(f"--state: {path}: {exc.strerror}")


def _start_fleet(source) -> str:
    """One node agent per simulated node; their samples go to the telemetry store if set."""
    from keti_ray.agent.fleet import start_local_fleet
    from keti_ray.agent.telemetry import StoreSink

    sink = StoreSink(source.telemetry_dir) if source.telemetry_dir else None
    return start_local_fleet(source, sink=sink)


@app.command("allocate")
def allocate_command(
    name: str = typer.Argument(..., help="Pod name."),
    cpu_milli: int = typer.Option(1000),
    memory_mib: int = typer.Option(1024),
    num_gpu: int = typer.Option(1),
    gpu_milli: int = typer.Option(1000),
    gpu_spec: str = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run"),
    release: bool = typer.Option(False, "--release", help="Release the pod instead."),
    url: str = typer.Option(None, help="Allocator URL (default http://127.0.0.1:$API_PORT)."),
) -> None:
    """Ask the running allocator for a placement (or --release one) and print the JSON answer."""
    import httpx

    url = url or f"http://127.0.0.1:{os.environ.get(ENV_API_PORT, DEFAULT_API_PORT)}"
    headers = {}
    if os.environ.get(ENV_TOKEN):
        headers["Authorization"] = f"Bearer {os.environ[ENV_TOKEN]}"
    if release:
        response = httpx.post(f"{url}/release", json={"pod": name}, headers=headers, timeout=30)
    else:
        pod = {
            "name": name,
            "cpu_milli": cpu_milli,
            "memory_mib": memory_mib,
            "num_gpu": num_gpu,
            "gpu_milli": gpu_milli,
        }
        if gpu_spec:
            pod["gpu_spec"] = gpu_spec
        response = httpx.post(
            f"{url}/allocate", json={"pod": pod, "dry_run": dry_run}, headers=headers, timeout=30
        )
    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise typer.Exit(code=1)
