"""The `keti-ray` command. Each subcommand lives in its own module and registers here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="keti-ray",
    help="SM-share GPU allocation on Ray: replay, train, serve, device plugins.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """keti-ray: SM-share GPU allocation on Ray (replay, train, serve, device plugins)."""


def _register() -> None:
    """Import the subcommand modules; each adds its commands to `app`."""
    from keti_ray.cli import (
        eval_cmd,  # noqa: F401
        train_cmd,  # noqa: F401
    )


def main() -> None:
    _register()
    app()
