"""`keti-ray report`: PNG figures and a text summary from the telemetry store."""

from __future__ import annotations

from pathlib import Path

import typer

from keti_ray.cli import app


@app.command("report")
def report_command(
    telemetry: Path = typer.Option(..., help="Telemetry store folder."),
    out: Path = typer.Option(Path("report"), help="Folder for the PNGs and summary.txt."),
) -> None:
    """Unallocated GPU over time, fragmentation, decision latency, SM occupancy per GPU."""
    if not telemetry.is_dir():
        typer.echo(f"error: --telemetry: {telemetry} is not a folder", err=True)
        raise typer.Exit(code=2)
    from keti_ray.report import write_report
    from keti_ray.telemetry import TelemetryStore

    summary = write_report(TelemetryStore(telemetry, writer="report"), out)
    for key, value in summary.items():
        if key != "figures":
            typer.echo(f"{key}: {value}")
    typer.echo(f"figures: {', '.join(Path(f).name for f in summary['figures'])} in {out}")
