"""The `keti-ray` command. Each subcommand lives in its own module and registers here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="keti-ray",
    help="SM-share GPU allocation on Ray: replay, train, serve, device plugins.",
    no_args_is_help=True,
    add_completion=False,
)


def fail(message: str) -> None:
    """Print `error: message` on stderr and exit 2 (bad input: nothing was done)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.callback()
def _root() -> None:
    """keti-ray: SM-share GPU allocation on Ray (replay, train, serve, device plugins)."""


def _register() -> None:
    """Import the subcommand modules; each adds its commands to `app`."""
    from keti_ray.cli import (  # noqa: F401
        eval_cmd,
        nodes_cmd,
        plugin_cmd,
        report_cmd,
        retrain_cmd,
        search_cmd,
        shim_cmd,
        train_cmd,
        up_cmd,
    )


def main() -> None:
    _register()
    app()
