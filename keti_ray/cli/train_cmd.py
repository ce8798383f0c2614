"""`keti-ray train`: behaviour-clone FGD or the rollout teacher, fine-tune with RLlib PPO, save a
verified checkpoint (safetensors weights + config.json + SHA-256 manifest)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keti_ray.cli import app


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command("train")
def train_command(
    config: Path = typer.Option(..., help="PPO configuration YAML (see rllib_configs/)."),
    pods: str = typer.Option(
        None, help="Comma list of pod lists to train on (overrides the config's env.pods)."
    ),
    iterations: int = typer.Option(
        ..., help="PPO iterations (algo.train() calls); 0 = behaviour cloning only."
    ),
    out: Path = typer.Option(..., help="Output folder: checkpoint/, report.json."),
    seed: int = typer.Option(None, help="Seed (overrides the config's seed)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue PPO from OUT/checkpoint's verified weights."
    ),
) -> None:
    """Train the PPO allocator; writes OUT/checkpoint (+ manifest.json) and OUT/report.json."""
    from keti_ray.paths import pod_list_csv
    from keti_ray.rl.checkpoint import CheckpointError
    from keti_ray.rl.config import ConfigError, load_config

    if iterations < 0:
        _fail(f"--iterations must be >= 0, got {iterations}")
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    if pods:
        cfg["env"]["pods"] = [p.strip() for p in pods.split(",") if p.strip()]
    if seed is not None:
        cfg["seed"] = seed
    for name in cfg["env"]["pods"] + list(cfg["eval"]["pods"]):
        try:
            csv = pod_list_csv(name)
        except FileNotFoundError as exc:
            _fail(str(exc))
        if not csv.is_file():
            _fail(f"--pods: pod list {name!r} not found ({csv}); use a short name or a CSV path")
    if resume and not (out / "checkpoint").is_dir():
        _fail(f"--resume: {out / 'checkpoint'} does not exist; train without --resume first")

    from keti_ray.rl.train import train

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.fields[phase]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    ) as progress:
        task = progress.add_task("", total=iterations, phase="starting")
        last_eval = {"text": ""}

        def on_iteration(i: int, stats: dict) -> None:
            ev = stats.get("eval")
            if ev:
                last_eval["text"] = (
                    f" | eval ppo {ev['ppo_unallocated_pct']:.2f}% vs fgd "
                    f"{ev['fgd_unallocated_pct']:.2f}%"
                )

            def fmt(key: str) -> str:
                value = stats.get(key)
                return "-" if value is None else f"{value:.3g}"

            desc = (
                f"it {i} return {fmt('episode_return_mean')} pi_loss {fmt('policy_loss')} "
                f"vf_loss {fmt('vf_loss')} entropy {fmt('entropy')}{last_eval['text']}"
            )
            progress.update(task, advance=1, description=desc)

        def on_phase(text: str) -> None:
            progress.update(task, phase=text)

        started = time.perf_counter()
        try:
            result = train(cfg, iterations, out, resume, on_iteration, on_phase)
        except (CheckpointError, ConfigError, ValueError) as exc:
            _fail(str(exc))
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    summary = {
        "checkpoint": str(result.checkpoint),
        "checkpoint_sha256": result.report.get("checkpoint_sha256"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "last_evaluation": {
            k: v for k, v in (result.report["evaluations"] or [{}])[-1].items() if k != "rows"
        },
        "report": str(out / "report.json"),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
