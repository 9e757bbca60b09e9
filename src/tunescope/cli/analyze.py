"""``tunescope analyze``: every stage, one run folder, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def analyze(
    model: Annotated[
        str | None, typer.Argument(help="Pre-trained model (default: the embedded model).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/latest"),
    task: Annotated[str, typer.Option("--task", "-t", help="Task name.")] = "movie-sentiment",
    tuned: Annotated[str | None, typer.Option("--tuned", help="Fine-tuned model to compare with.")] = None,
    split: opt.Split = "validation",
    limit: Annotated[int | None, typer.Option("--limit", help="Examples analysed (0 = all).")] = 1000,
    pooling: Annotated[str, typer.Option("--pooling", help="mean or cls.")] = "mean",
    data_dir: opt.DataDir = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    stages: Annotated[str | None, typer.Option("--stages", help="Comma-separated stages to run.")] = None,
    measure: Annotated[
        list[str] | None,
        typer.Option(
            "--measure", "-m", help="Similarity measure(s); default linear_cka; ':debiased' suffix."
        ),
    ] = None,
    rsa: Annotated[
        str, typer.Option("--rsa", help="RDM,COMPARE for rsa.csv, or 'none'.")
    ] = "correlation,spearman",
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Run the analyses and write RUN/manifest.json, RUN/results/*.csv, RUN/figures and RUN/report.html.

    With no arguments: the embedded all-MiniLM-L6-v2 on the builtin movie-sentiment task, offline.
    A rerun of the same command skips the stages already done.

    Examples:

        tunescope analyze --out runs/demo

        tunescope analyze bert-base-uncased --tuned my-sst2-model --task sst2 --data-dir glue/ --out runs/sst2
    """
    from tunescope.pipeline import AnalyzeConfig
    from tunescope.pipeline import analyze as run_analyze
    from tunescope.stages.similarity import parse_measure

    measures = tuple(measure or ["linear_cka"])
    for spec in measures:  # fail before anything slow
        parse_measure(spec)
    config = AnalyzeConfig(
        out=out,
        model=model,
        tuned=tuned,
        task=task,
        data_dir=str(data_dir) if data_dir else None,
        split=split,
        limit=limit or None,
        pooling=opt.sentence_pooling(pooling),
        batch_size=batch_size,
        device=device,
        seed=seed,
        stages=tuple(s.strip() for s in stages.split(",")) if stages else None,
        measures=measures,
        rsa=opt.rsa_option(rsa),
    )
    root = run_analyze(config)
    typer.echo(f"report: {root / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
