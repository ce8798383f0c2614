"""`keti-ray eval`: replay the openb trace under several policies and print the paper's table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keti_ray.cli import app, fail
from keti_ray.cluster import ModelError
from keti_ray.evaluate import (
    REPORT_POINTS,
    load_inputs,
    parse_seeds,
    run_evaluation,
    summarise,
)
from keti_ray.paths import default_nodes_csv, pod_list_csv
from keti_ray.trace import TraceError


@app.command("eval")
def eval_command(
    nodes: Path = typer.Option(None, help="Node list CSV (default: openb GPU nodes)."),
    pods: str = typer.Option("default", help="Pod list CSV, or a short name like gpushare40."),
    policy: str = typer.Option(
        "fgd,bestfit", help="Comma list: random,dotprod,clustering,packing,bestfit,fgd,ppo[:PATH]."
    ),
    seeds: str = typer.Option("42-51", help="Seeds: N, N-M or a comma list."),
    tune: float = typer.Option(1.3, help="Tune the workload's GPU requests to this x capacity."),
    workers: int = typer.Option(1, help="Replays run in this many processes."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
    plot: Path = typer.Option(None, help="Write the unallocated-GPU curves to this PNG."),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Also decompose what is left at the end: slivers by free milli, whole free GPUs "
        "(stranded by CPU), skipped demand by shape (means over seeds).",
    ),
) -> None:
    """Replay the trace under each policy and seed; report unallocated GPU % at 100-130% arrived."""
    try:
        seed_list = parse_seeds(seeds)
        nodes_csv = nodes or default_nodes_csv()
        pods_csv = pod_list_csv(pods)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    policies = [p.strip() for p in policy.split(",") if p.strip()]
    if not policies:
        fail("--policy: name at least one policy")
    if tune <= 0:
        fail(f"--tune must be > 0, got {tune}")
    from keti_ray.allocators import HEURISTICS

    for name in policies:
        if name not in HEURISTICS and name != "ppo" and not name.startswith("ppo:"):
            fail(f"--policy: {name!r} is unknown; accepted: {', '.join(HEURISTICS)}, ppo[:PATH]")

    try:  # validate the inputs before any work starts
        load_inputs(str(nodes_csv), str(pods_csv))
    except (TraceError, ModelError) as exc:
        fail(str(exc))

    stderr = Console(stderr=True)
    total = len(policies) * len(seed_list)
    with Progress(
        TextColumn("[bold]replays"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=stderr,
        transient=as_json,
    ) as progress:
        task = progress.add_task("", total=total)

        def advance(result) -> None:
            desc = f"{result.policy} seed {result.seed}: {result.at(130):.2f}% unallocated"
            progress.update(task, advance=1, description=desc)

        try:
            results = run_evaluation(
                nodes_csv, pods_csv, policies, seed_list, tune, workers, advance, explain
            )
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc))
    summary = summarise(results, policies)
    if plot is not None:
        from keti_ray.plotting import plot_curves

        plot_curves(summary, plot, title=f"{Path(pods_csv).stem}, tune {tune}, seeds {seeds}")
    if as_json:
        payload = {
            "nodes": str(nodes_csv),
            "pods": str(pods_csv),
            "tune": tune,
            "seeds": seed_list,
            "results": {
                name: {k: v for k, v in row.items() if k != "curve_mean"}
                for name, row in summary.items()
            },
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    table = Table(
        title=f"Unallocated GPU % ({Path(pods_csv).name}, tune {tune}, {len(seed_list)} seeds)"
    )
    table.add_column("policy")
    for point in REPORT_POINTS:
        table.add_column(f"{point}%", justify="right")
    table.add_column("frag % @130", justify="right")
    table.add_column("s/replay", justify="right")
    for name, row in summary.items():
        mean, std = row["unallocated_gpu_pct"], row["unallocated_gpu_pct_std"]
        cells = [f"{mean[str(p)]:.2f} ± {std[str(p)]:.2f}" for p in REPORT_POINTS]
        table.add_row(
            name, *cells, f"{row['frag_pct_130']:.2f}", f"{row['seconds_per_replay']:.2f}"
        )
    Console(width=max(Console().width, 110)).print(table)
    if explain:
        for name, row in summary.items():
            typer.echo(f"{name}: what is left at the end (% of GPU capacity, mean over seeds)")
            typer.echo(json.dumps(row["explain"], indent=1))
