"""`keti-ray shim path|build|env|configmap`: the SM-capping shim (native/vai_accelerator)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
import yaml

from keti_ray import shim
from keti_ray.cli import app, fail

shim_app = typer.Typer(
    help="The SM-capping CUDA shim libvai_accelerator.so: locate, build, env, ConfigMap.",
    no_args_is_help=True,
)
app.add_typer(shim_app, name="shim")


def _library(library: Path | None, build: bool) -> Path:
    if library is not None:
        if not library.is_file():
            fail(f"--library: {library} is not a file")
        return library
    try:
        return shim.locate_or_build() if build else _found()
    except shim.ShimError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def _found() -> Path:
    found = shim.find_library()
    if found is None:
        looked = ", ".join(str(p) for p in shim.library_candidates())
        raise shim.ShimError(
            f"libvai_accelerator.so not found (looked in {looked}); run `keti-ray shim build`"
        )
    return found


@shim_app.command("path")
def path_cmd() -> None:
    """Print where the shim library is (exit 2 if it is nowhere)."""
    typer.echo(_library(None, build=False))


@shim_app.command("build")
def build_cmd() -> None:
    """Build the shim from this checkout (`make -C native/vai_accelerator`) and print its path."""
    try:
        typer.echo(shim.build_library())
    except shim.ShimError as exc:
        fail(str(exc))


@shim_app.command("env")
def env_cmd(
    pct: Annotated[int, typer.Option("--pct", help="SM percent 1-99 (100 = no cap)")],
    memory: Annotated[
        str | None, typer.Option("--memory", help="GPU memory quota: bytes or 512Mi, 20Gi")
    ] = None,
    pod: Annotated[
        bool, typer.Option("--pod", help="a pod's env, mounts and volumes (YAML)")
    ] = False,
    status_host_dir: Annotated[
        str,
        typer.Option("--status-host-dir", help="--pod: the allocation's status dir on the node"),
    ] = "/var/run/keti-ray/vai-status/local",
    status_dir: Annotated[
        str | None, typer.Option("--status-dir", help="VAI_STATUS_DIR for a local run")
    ] = None,
    mps_pipe_dir: Annotated[
        str | None, typer.Option("--mps-pipe-dir", help="CUDA_MPS_PIPE_DIRECTORY")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="error, warn, info or debug")
    ] = None,
    library: Annotated[
        Path | None, typer.Option("--library", help="the library to preload")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON object instead of exports")
    ] = False,
) -> None:
    """The environment that runs a CUDA process here at --pct % of the SMs (shell exports:
    `eval "$(keti-ray shim env --pct 50)"`), or with --pod what a pod needs."""
    try:
        if pod:
            typer.echo(
                yaml.safe_dump(shim.pod_fragment(pct, status_host_dir, memory), sort_keys=False),
                nl=False,
            )
            return
        env = shim.shim_env(
            pct,
            memory,
            library=str(_library(library, build=True).resolve()),
            status_dir=status_dir,
            mps_pipe_dir=mps_pipe_dir,
            log_level=log_level,
        )
    except ValueError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(env, indent=2))
    else:
        for k, v in env.items():
            typer.echo(f"export {k}={shlex.quote(v)}")


@shim_app.command("configmap")
def configmap_cmd(
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="namespace of the ConfigMap")
    ] = "kube-system",
    out: Annotated[
        Path | None, typer.Option("--out", help="write the YAML here instead of stdout")
    ] = None,
    library: Annotated[
        Path | None, typer.Option("--library", help="library to carry (default: built)")
    ] = None,
) -> None:
    """The ConfigMap `vai-accelerator-binary` carrying the built library as binaryData."""
    lib = _library(library, build=True)
    try:
        manifest = shim.configmap_manifest(lib, namespace)
    except ValueError as exc:
        fail(str(exc))
        return
    text = yaml.safe_dump(manifest, sort_keys=False)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc.strerror}")
    typer.echo(f"wrote {out} ({lib.stat().st_size} bytes of {lib.name}, namespace {namespace})")
