"""`keti-ray retrain`: calibrate from telemetry, train a candidate, promote only if better."""

from __future__ import annotations

from pathlib import Path

import typer

from keti_ray.cli import app, fail


@app.command("retrain")
def retrain_command(
    telemetry: Path = typer.Option(..., help="Telemetry store folder."),
    from_: str = typer.Option(
        None, "--from", help="Serving checkpoint folder or pointer JSON (default: FGD)."
    ),
    out: Path = typer.Option(..., help="Output folder (mix, workload, candidate, report)."),
    pointer: Path = typer.Option(None, help="Serving pointer to rewrite when the candidate wins."),
    nodes: Path = typer.Option(
        None,
        help="Node list CSV to train and evaluate on (default: the live list the served "
        "allocator loads, $KETI_NODES_CSV, or $KETI_SIM_NODES simulated nodes).",
    ),
    config: Path = typer.Option(None, help="RLlib config (default rllib_configs/retrain.yaml)."),
    iterations: int = typer.Option(10, help="PPO iterations."),
    window_s: float = typer.Option(None, help="Only telemetry events this recent (seconds)."),
    min_improvement: float = typer.Option(
        0.05,
        help="Margin (points of unallocated GPU) the paired mean improvement must exceed, "
        "on top of twice its standard error over the held-out seeds.",
    ),
    seed: int = typer.Option(0),
) -> None:
    """Warm-start PPO from the serving policy on the live mix; promote only a better candidate."""
    from keti_ray.retrain import RetrainError, RetrainSettings, live_nodes, retrain
    from keti_ray.trace import TraceError

    if not telemetry.is_dir():
        fail(f"--telemetry: {telemetry} is not a folder")
    if iterations < 0:
        fail(f"--iterations must be >= 0, got {iterations}")
    try:
        node_specs = live_nodes(nodes)
    except (TraceError, ValueError) as exc:
        fail(str(exc))
    settings = RetrainSettings(
        telemetry=telemetry,
        out=out,
        nodes=node_specs,
        serving=from_,
        pointer=pointer,
        config=str(config) if config else None,
        iterations=iterations,
        window_s=window_s,
        min_improvement=min_improvement,
        seed=seed,
    )
    try:
        result = retrain(settings, on_phase=lambda text: typer.echo(f"[retrain] {text}", err=True))
    except RetrainError as exc:
        fail(str(exc))
    verdict = "promoted" if result.promoted else "kept the serving policy"
    typer.echo(
        f"{verdict}: candidate {result.candidate_pct:.2f}% vs {result.serving_policy} "
        f"{result.serving_pct:.2f}% unallocated GPU; report {result.report}"
    )
