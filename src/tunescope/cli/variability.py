"""``tunescope variability``: each layer's hidden-state variability and the layers it selects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def variability(
    model: Annotated[str, typer.Argument(help="Pre-trained model (folder or hub id; 'default' = embedded).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/variability"),
    task: Annotated[str, typer.Option("--task", "-t", help="A classification task.")] = "movie-sentiment",
    tuned: Annotated[
        str | None, typer.Option("--tuned", help="A fine-tuned model whose curve to add.")
    ] = None,
    budget: Annotated[int, typer.Option("--budget", help="How many layers to tune (m).")] = 2,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", min=0, help="Training examples the variability is computed on, seeded (0 = all)."
        ),
    ] = 2000,
    pooling: Annotated[
        str,
        typer.Option(
            "--pooling",
            help="mean_no_special (Xie et al.: non-special tokens), mean (special tokens included) or cls.",
        ),
    ] = "mean_no_special",
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Write OUT/results/variability.csv and layer_selection.csv, print them, and draw the report.

    Variability is Tr(Σ_W Σ_B⁺)/C of each layer's pooled states (Xie et al. 2022; lower = classes better
    separated), on a seeded sample of the task's training split, as the paper computes it. The
    classifier goes on the lowest layer of the pre-trained curve and the BUDGET layers ending there are
    the ones to tune; `tunescope analyze` then tests that choice (stage selection).

    Examples:

        tunescope variability default --task movie-sentiment --out runs/var

        tunescope variability bert-base-uncased --tuned my-sst2 --task sst2 --data-dir glue/ --budget 3
    """
    from tunescope.errors import InputError
    from tunescope.pipeline import AnalyzeConfig, analyze, load_table, read_manifest

    if budget < 1:  # before anything slow
        raise InputError(f"--budget must be a positive number of layers; got {budget}")
    config = AnalyzeConfig(
        out=out,
        model=None if model == "default" else model,
        tuned=tuned,
        task=task,
        data_dir=str(data_dir) if data_dir else None,
        batch_size=batch_size,
        device=device,
        seed=seed,
        stages=("variability",),
        finetune=False,
        options={
            "variability": {
                "budget": budget,
                "limit": limit or None,
                "pooling": opt.sentence_pooling(pooling),
            }
        },
    )
    root = analyze(config)
    for note in read_manifest(root).get("notes", []):
        typer.echo(f"note: {note}", err=True)
    rows = load_table(root, "variability")
    if rows:
        typer.echo(f"{'model':<8} {'layer':>5} {'variability':>12}  selected")
        for row in rows:
            typer.echo(
                f"{row['model']:<8} {row['layer']:>5} {float(row['variability']):>12.4g}  {row['selected']}"
            )
    chosen = load_table(root, "layer_selection")
    if chosen:
        typer.echo(f"selection (budget {chosen[0]['budget']}): {chosen[0]['reason']}")
    typer.echo(f"tables: {root / 'results'}; report: {root / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("variability")(variability)
