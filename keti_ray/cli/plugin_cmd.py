"""`keti-ray plugin gpu|npu` (the DaemonSet entrypoints) and `keti-ray agent`."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from keti_ray.cli import app, fail
from keti_ray.constants import (
    DEVICE_PLUGIN_DIR,
    ENV_GPU_UUID,
    LIMITS_HOST_DIR,
    MPS_LOG_DIR,
    MPS_PIPE_DIR,
    MPS_PIPE_HOST_DIR,
    MPS_SHM_HOST_DIR,
    SHIM_HOST_DIR,
    SHIM_LIBRARY_NAME,
    VAI_STATUS_HOST_DIR,
)

plugin_app = typer.Typer(
    help="Kubelet device plugins (gRPC v1beta1): register with kubelet and serve until stopped.",
    no_args_is_help=True,
)
app.add_typer(plugin_app, name="plugin")

SHIM_HOST_PATH = f"{SHIM_HOST_DIR}/{SHIM_LIBRARY_NAME}"
PLUGIN_DIR_HELP = "kubelet's device-plugin directory (kubelet.sock lives there)"
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
APISERVER_HELP = (
    "where the pods' keti.re.kr/allocation decisions come from: 'incluster' (the service "
    "account), a URL, or 'none' (the plugin chooses every GPU itself, counted as fallbacks)"
)
MPS_MOUNTS_HELP = (
    "MPS shares' pipe-directory mount: 'ro' (connect only), 'rw', or 'none' (no MPS on this "
    "node: MPS shares get neither the pipe nor the server's /dev/shm)"
)


def _apiserver(value: str) -> str | None:
    if value == "none":
        return None
    if value == "incluster" or value.startswith(("http://", "https://")):
        return value
    fail(f"--apiserver must be 'incluster', 'none' or an http(s) URL, got {value!r}")


def _wait_for_signal(run_for: float | None) -> None:
    """Block until SIGTERM/SIGINT (kubelet's DaemonSet stop) or `run_for` seconds."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait(run_for)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@plugin_app.command("gpu")
def plugin_gpu(
    plugin_dir: Annotated[Path, typer.Option(help=PLUGIN_DIR_HELP)] = Path(DEVICE_PLUGIN_DIR),
    simulate: Annotated[
        int | None,
        typer.Option(min=0, help="serve N simulated GPUs instead of discovering them through NVML"),
    ] = None,
    memory_limit: Annotated[
        str, typer.Option(help="VAI_MEMORY_LIMIT: 'proportional', 'none' or a quantity like 20Gi")
    ] = "proportional",
    shim_host_path: Annotated[
        str, typer.Option(help="the shim library on the host")
    ] = SHIM_HOST_PATH,
    mps_pipe_dir: Annotated[str, typer.Option(help="host MPS pipe directory")] = MPS_PIPE_HOST_DIR,
    mps_shm_dir: Annotated[
        str, typer.Option(help="host directory of the MPS server's /dev/shm")
    ] = MPS_SHM_HOST_DIR,
    mps_mounts: Annotated[str, typer.Option(help=MPS_MOUNTS_HELP)] = "ro",
    status_dir: Annotated[
        str, typer.Option(help="host directory for shim status")
    ] = VAI_STATUS_HOST_DIR,
    limits_dir: Annotated[
        str, typer.Option(help="host directory of the per-allocation limits files")
    ] = LIMITS_HOST_DIR,
    probe_interval: Annotated[
        float, typer.Option(min=0.05, help="health probe period, seconds")
    ] = 5.0,
    apiserver: Annotated[str, typer.Option(help=APISERVER_HELP)] = "none",
    node_name: Annotated[
        str | None, typer.Option(envvar="NODE_NAME", help="this node's name (decisions)")
    ] = None,
    pod_resources_socket: Annotated[
        str | None, typer.Option(help="kubelet's PodResources socket; reconcile records from it")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve the plugin's /metrics on this port (0: any free)")
    ] = None,
    run_for: Annotated[
        float | None, typer.Option(help="stop after this many seconds (tests)")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve keti.re.kr/gpu-pct (100 SM-percent units per GPU; $GPU_UUID limits the GPUs)."""
    from keti_ray.deviceplugin.decisions import ApiServerPods, watched_finder
    from keti_ray.deviceplugin.gpu import GpuPlugin, validate_memory_limit
    from keti_ray.deviceplugin.mpsmounts import validate_mps_mounts
    from keti_ray.deviceplugin.nvml import open_backend
    from keti_ray.deviceplugin.podresources import PodResourcesClient

    _setup_logging(log_level)
    try:
        validate_memory_limit(memory_limit)
    except ValueError as e:
        fail(f"--memory-limit: {e}")
    try:
        validate_mps_mounts(mps_mounts)
    except ValueError as e:
        fail(f"--mps-mounts: {e}")
    try:
        backend = open_backend(simulate)
    except Exception as e:
        fail(f"NVML unavailable ({e}); on a node without GPUs pass --simulate N")
    only = [u for u in os.environ.get(ENV_GPU_UUID, "").split(",") if u]
    api = _apiserver(apiserver)
    if api and not node_name:
        fail("--apiserver needs --node-name (or $NODE_NAME): decisions are per node")
    decisions = None
    if api:
        pods = ApiServerPods.from_environment(node_name, host=None if api == "incluster" else api)
        decisions, _watcher = watched_finder(node_name, pods)
    pr = PodResourcesClient(pod_resources_socket) if pod_resources_socket else None
    try:
        plugin = GpuPlugin(
            backend,
            plugin_dir,
            memory_limit=memory_limit,
            shim_host_path=shim_host_path,
            mps_pipe_dir=mps_pipe_dir,
            mps_shm_host_dir=mps_shm_dir,
            mps_mounts=mps_mounts,
            status_host_dir=status_dir,
            limits_host_dir=limits_dir,
            probe_interval_s=probe_interval,
            only_uuids=only or None,
            decisions=decisions,
            pod_resources=pr,
        )
    except ValueError as e:
        fail(str(e))
    if decisions is not None:
        decisions.held = plugin._held_containers
    plugin.start()
    metrics = None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        metrics, _ = start_http_server(metrics_port, registry=plugin.registry)
    typer.echo(
        json.dumps(
            {
                "resource": plugin.resource_name,
                "socket": str(plugin.socket_path),
                "gpus": [g.uuid for g in plugin.gpus],
                "simulated": backend.simulated,
                "chooser": plugin.chooser_name,
                "metrics_port": metrics.server_port if metrics else None,
            }
        )
    )
    try:
        _wait_for_signal(run_for)
    finally:
        plugin.stop()
        backend.close()


@plugin_app.command("npu")
def plugin_npu(
    plugin_dir: Annotated[Path, typer.Option(help=PLUGIN_DIR_HELP)] = Path(DEVICE_PLUGIN_DIR),
    simulate: Annotated[
        int | None, typer.Option(min=0, help="serve N emulated NPUs (overrides NPU_DEVICE_COUNT)")
    ] = None,
    sysfs_root: Annotated[Path, typer.Option(help="sysfs root (tests use a fake tree)")] = Path(
        "/sys"
    ),
    dev_root: Annotated[Path, typer.Option(help="/dev root (tests use a fake tree)")] = Path(
        "/dev"
    ),
    health_interval: Annotated[
        float, typer.Option(min=0.05, help="device-node check period, s")
    ] = 1.0,
    run_for: Annotated[
        float | None, typer.Option(help="stop after this many seconds (tests)")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve keti.re.kr/npu (one device ID per NPU)."""
    from keti_ray.constants import ENV_NPU_DEVICE_COUNT
    from keti_ray.deviceplugin.npu import NpuPlugin, discover_npus

    _setup_logging(log_level)
    if simulate is not None:
        npus = discover_npus(
            Path("/nonexistent"), Path("/nonexistent"), env={ENV_NPU_DEVICE_COUNT: str(simulate)}
        )
    else:
        try:
            npus = discover_npus(sysfs_root, dev_root, env=dict(os.environ))
        except ValueError as e:
            fail(str(e))
    plugin = NpuPlugin(npus, plugin_dir, health_interval_s=health_interval)
    plugin.start()
    typer.echo(
        json.dumps(
            {
                "resource": plugin.resource_name,
                "socket": str(plugin.socket_path),
                "npus": [n.id for n in npus],
                "emulated": all(n.kind == "emulated" for n in npus),
            }
        )
    )
    try:
        _wait_for_signal(run_for)
    finally:
        plugin.stop()


@app.command("agent")
def agent(
    local: Annotated[
        bool,
        typer.Option("--local", help="run one NodeAgent in this process instead of a Ray Fleet"),
    ] = False,
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone",
            help="the GPU DaemonSet's mode: one NodeAgent here, no Ray; serves the plugin, "
            "MPS + ceilings, pushes telemetry to --allocator-url, publishes the node's GPUs",
        ),
    ] = False,
    node_name: Annotated[
        str | None, typer.Option(envvar="NODE_NAME", help="this node's name (--standalone)")
    ] = None,
    allocator_url: Annotated[
        str | None, typer.Option(help="--standalone: the allocator's base URL (POST /telemetry)")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="--standalone: bearer token for the allocator")
    ] = None,
    apiserver: Annotated[str, typer.Option(help=APISERVER_HELP)] = "none",
    pod_resources_socket: Annotated[
        str | None, typer.Option(help="kubelet's PodResources socket (reconcile)")
    ] = None,
    publish: Annotated[
        bool, typer.Option(help="--standalone: publish the GPUs on the Node (needs --apiserver)")
    ] = True,
    metrics_port: Annotated[
        int | None, typer.Option(help="--standalone: serve /metrics on this port (0: any)")
    ] = None,
    limits_dir: Annotated[
        str, typer.Option(help="host directory of the limits files")
    ] = LIMITS_HOST_DIR,
    memory_limit: Annotated[
        str, typer.Option(help="VAI_MEMORY_LIMIT: 'proportional', 'none' or a quantity like 20Gi")
    ] = "proportional",
    address: Annotated[str, typer.Option(help="Ray cluster address (Fleet mode)")] = "auto",
    plugin_dir: Annotated[
        str, typer.Option(help=PLUGIN_DIR_HELP + "; may hold {node_id}")
    ] = DEVICE_PLUGIN_DIR,
    simulate: Annotated[
        int | None, typer.Option(min=0, help="N simulated GPUs instead of NVML")
    ] = None,
    gpu: Annotated[bool, typer.Option(help="run the GPU plugin")] = True,
    npu: Annotated[bool, typer.Option(help="run the NPU plugin")] = False,
    mps: Annotated[bool, typer.Option(help="manage the MPS control daemon")] = True,
    serve_plugins: Annotated[
        bool, typer.Option(help="serve the kubelet plugins in the agent (off: a DaemonSet does)")
    ] = True,
    mps_pipe_dir: Annotated[
        str, typer.Option(help="the MPS daemon's pipe directory")
    ] = MPS_PIPE_DIR,
    mps_pipe_host_dir: Annotated[
        str | None, typer.Option(help="that directory on the node (default: the same path)")
    ] = None,
    mps_shm_host_dir: Annotated[
        str, typer.Option(help="the MPS server's /dev/shm on the node")
    ] = MPS_SHM_HOST_DIR,
    mps_mounts: Annotated[
        str | None, typer.Option(help=MPS_MOUNTS_HELP + "; default 'ro' with --mps, else 'none'")
    ] = None,
    mps_log_dir: Annotated[str, typer.Option()] = MPS_LOG_DIR,
    status_dir: Annotated[str, typer.Option()] = VAI_STATUS_HOST_DIR,
    interval: Annotated[float, typer.Option(min=0.05, help="telemetry period, seconds")] = 1.0,
    telemetry_store: Annotated[
        Path | None,
        typer.Option(help="write samples into this telemetry store (keti_ray.telemetry)"),
    ] = None,
    telemetry_out: Annotated[
        Path | None, typer.Option(help="--local: append telemetry as JSONL")
    ] = None,
    detached: Annotated[
        bool, typer.Option(help="Fleet: detached agents; exit after starting")
    ] = False,
    run_for: Annotated[
        float | None, typer.Option(help="stop after this many seconds (tests)")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Node agents: device plugins + MPS + telemetry (one per node carrying the node resource)."""
    from keti_ray.agent.node_agent import AgentConfig, NodeAgent
    from keti_ray.agent.telemetry import JsonlSink, ListSink, StoreSink

    _setup_logging(log_level)
    if mps_mounts is not None:
        from keti_ray.deviceplugin.mpsmounts import validate_mps_mounts

        try:
            validate_mps_mounts(mps_mounts)
        except ValueError as e:
            fail(f"--mps-mounts: {e}")
    config = AgentConfig(
        plugin_dir=plugin_dir,
        gpu=gpu,
        npu=npu,
        simulate=simulate,
        mps=mps,
        serve_plugins=serve_plugins,
        mps_pipe_dir=mps_pipe_dir,
        mps_pipe_host_dir=mps_pipe_host_dir,
        mps_shm_host_dir=mps_shm_host_dir,
        mps_mounts=mps_mounts,
        mps_log_dir=mps_log_dir,
        status_host_dir=status_dir,
        limits_host_dir=limits_dir,
        memory_limit=memory_limit,
        telemetry_interval_s=interval,
        node_name=node_name,
        apiserver=_apiserver(apiserver),
        pod_resources_socket=pod_resources_socket,
    )
    if standalone:
        from keti_ray.agent.standalone import StandaloneAgent, read_token

        if not node_name:
            fail("--standalone needs --node-name (or $NODE_NAME)")
        try:
            node = StandaloneAgent(
                config,
                allocator_url=allocator_url,
                token=read_token(token_file),
                publish=publish,
                metrics_port=metrics_port,
            )
        except (ValueError, OSError) as e:
            fail(str(e))
        typer.echo(json.dumps(node.info(), default=str))
        try:
            _wait_for_signal(run_for)
        finally:
            node.stop()
        return
    if local:
        sink = (
            StoreSink(telemetry_store)
            if telemetry_store
            else JsonlSink(telemetry_out)
            if telemetry_out
            else ListSink()
        )
        node = NodeAgent(config, sink)
        typer.echo(json.dumps(node.info(), default=str))
        try:
            _wait_for_signal(run_for)
        finally:
            node.stop()
        return

    import ray

    from keti_ray.agent.fleet import Fleet

    ray.init(address=address, namespace="keti-ray", log_to_driver=False)
    fleet = Fleet(
        config,
        StoreSink(telemetry_store) if telemetry_store else None,
        detached=detached,
        namespace="keti-ray",
    )
    started = fleet.start()
    typer.echo(json.dumps({"started_on": started, "agents": fleet.info()}, default=str))
    if detached:
        return
    try:
        _wait_for_signal(run_for)
    finally:
        fleet.stop()
