"""`keti-ray search`: CMA-ES policy search for the learned allocator (keti_ray.rl.search)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from keti_ray.cli import app, fail


@app.command("search")
def search_command(
    out: Path = typer.Option(..., help="Output folder (new or empty): checkpoint/, report, PNG."),
    lists: str = typer.Option(
        "default,gpushare40,gpuspec25,multigpu20,cpu200",
        help="Comma list of training pod lists (at most 5 of the 9; the rest stay unseen).",
    ),
    generations: int = typer.Option(20, help="CMA-ES generations (each on new design seeds)."),
    popsize: int = typer.Option(16, help="Weight vectors per generation (>= 4)."),
    seeds_per_generation: int = typer.Option(5, help="(list, seed) pairs per generation."),
    sigma0: float = typer.Option(0.3, help="Initial step, in spreads of each feature."),
    workers: int = typer.Option(2, help="Worker processes (one replay each at a time)."),
    time_budget: float = typer.Option(0.0, help="Seconds after which no generation starts."),
    seed: int = typer.Option(0, help="Seed of CMA-ES and of the network's unused layers."),
    seed_base: int = typer.Option(
        20_000, help="First design seed (a continued search must use new ones; never 42-51)."
    ),
    init: Path = typer.Option(
        None, help="Continue from an earlier search: its search_report.json."
    ),
    linear_groups: int = typer.Option(
        1,
        help="1 = one weight vector for all pods; 4 = one per pod class (shared, one GPU, "
        "multi GPU, CPU only).",
    ),
    cma_diagonal: bool = typer.Option(
        False, help="Separable CMA-ES (diagonal covariance), for many weights."
    ),
    new_feature_step: float = typer.Option(
        3.0,
        help="With --init: initial step of features the earlier search did not have, as a "
        "multiple of --sigma0 (they start at weight 0).",
    ),
) -> None:
    """Search the linear head of the candidate scorer on full-cluster replays against FGD."""
    from keti_ray.paths import pod_list_csv
    from keti_ray.rl.search import SearchSettings, run_search

    names = tuple(x.strip() for x in lists.split(",") if x.strip())
    if not 1 <= len(names) <= 5:
        fail(f"--lists: give 1-5 training pod lists (comma list), got {len(names)}")
    for name in names:
        try:
            if not pod_list_csv(name).is_file():
                raise FileNotFoundError(name)
        except FileNotFoundError:
            fail(f"--lists: pod list {name!r} not found; use short names such as default")
    if out.exists() and any(out.iterdir()):
        fail(f"--out: {out} is not empty; every search writes a new folder")
    if workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    start = None
    if init is not None:
        try:
            start = json.loads(init.read_text())
            if not isinstance(start.get("weights"), dict) or "feature_scales" not in start:
                raise ValueError("no 'weights' or 'feature_scales'")
        except (OSError, ValueError) as exc:
            fail(f"--init: {init} is not a search report written by `keti-ray search` ({exc})")
    try:
        settings = SearchSettings(
            seed_base=seed_base,
            lists=names,
            generations=generations,
            popsize=popsize,
            seeds_per_generation=seeds_per_generation,
            sigma0=sigma0,
            workers=workers,
            time_budget_s=time_budget,
            seed=seed,
            linear_groups=linear_groups,
            cma_diagonal=cma_diagonal,
            new_feature_step=new_feature_step,
        )
    except ValueError as exc:
        fail(str(exc))
    if start is not None:  # refuse a report that cannot start this search before any work
        import numpy as np

        from keti_ray.rl.search import SEARCHED, start_coordinates

        try:
            start_coordinates(start, np.ones(len(SEARCHED)), linear_groups)
        except (KeyError, TypeError, ValueError) as exc:
            fail(f"--init: {init} cannot start this search ({exc})")
    report = run_search(
        settings, out, log=lambda line: print(line, file=sys.stderr, flush=True), init=start
    )
    summary = {
        "checkpoint": str(out / "checkpoint"),
        "checkpoint_sha256": report["checkpoint_sha256"],
        "validation": report["validation"],
        "wall_seconds": report["wall_seconds"],
    }
    sys.stdout.write(json.dumps(summary) + "\n")
