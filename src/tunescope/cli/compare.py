"""``tunescope compare``: layer-by-layer similarity between two models on the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def compare(
    model_a: Annotated[
        str, typer.Argument(help="First model (folder or hub id; 'default' = embedded model).")
    ],
    model_b: Annotated[str, typer.Argument(help="Second model, e.g. the fine-tuned one.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/compare"),
    task: Annotated[
        str, typer.Option("--task", "-t", help="Task whose texts are the inputs.")
    ] = "movie-sentiment",
    measure: opt.Measures = None,
    rsa: opt.Rsa = "correlation,spearman",
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = 1000,
    pooling: opt.SentencePooling = "mean",
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Write OUT/results/cka.csv and rsa.csv (every layer pair of A×A, B×B and A×B) and heatmaps.

    Examples:

        tunescope compare default path/to/finetuned --task movie-sentiment --out runs/cmp

        tunescope compare bert-base-uncased my-model --measure linear_cka --measure linear_cka:debiased
    """
    from tunescope.pipeline import AnalyzeConfig, analyze

    config = AnalyzeConfig(
        out=out,
        model=None if model_a == "default" else model_a,
        tuned=None if model_b == "default" else model_b,
        task=task,
        data_dir=str(data_dir) if data_dir else None,
        split=split,
        limit=limit or None,
        pooling=opt.sentence_pooling(pooling),
        batch_size=batch_size,
        device=device,
        seed=seed,
        stages=("similarity",),
        finetune=False,
        labels=("A", "B"),
        options={"similarity": {"rsa": rsa, **({"measures": tuple(measure)} if measure else {})}},
    )
    root = analyze(config)
    typer.echo(f"tables: {root / 'results'}; report: {root / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
