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
    limit: opt.AnalysisLimit = 1000,
    pooling: opt.SentencePooling = "mean",
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    stages: Annotated[str | None, typer.Option("--stages", help="Comma-separated stages to run.")] = None,
    measure: opt.Measures = None,
    rsa: opt.Rsa = "correlation,spearman",
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune/--no-finetune",
            help="Without --tuned, fine-tune the model on the task (kept in RUN/models/tuned).",
        ),
    ] = True,
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs (every experiment).")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Peak fine-tuning learning rate (AdamW).")] = 5e-5,
    train_limit: Annotated[
        int, typer.Option("--train-limit", min=0, help="Training examples for fine-tuning (0 = all).")
    ] = 2000,
    ffn_layers: Annotated[
        str | None,
        typer.Option("--ffn-layers", help="Layers whose FFN the ffn experiment removes (default: chosen)."),
    ] = None,
    budget: Annotated[
        int, typer.Option("--budget", help="Layers the variability-selection experiment tunes (m).")
    ] = 2,
    probe_tasks: Annotated[
        str, typer.Option("--probe-tasks", help="Token probes: pos,tag,dep (silver) or upos,xpos,deprel.")
    ] = "pos,dep",
    conllu: Annotated[
        Path | None, typer.Option("--conllu", help="CoNLL-U treebank with gold labels for the probes.")
    ] = None,
    ood_tasks: Annotated[
        str | None,
        typer.Option("--ood-tasks", help="Out-of-domain tasks for the domains stage (default: the task's)."),
    ] = None,
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
        measures=opt.measures(measure),
        rsa=opt.rsa_option(rsa),
        finetune=finetune,
        epochs=epochs,
        learning_rate=lr,
        train_limit=train_limit or None,
        ffn_layers=opt.layer_list(ffn_layers, "--ffn-layers"),
        selection_budget=budget,
        probe_tasks=opt.name_list(probe_tasks) or (),
        conllu=str(conllu) if conllu else None,
        ood_tasks=opt.name_list(ood_tasks),
    )
    root = run_analyze(config)
    typer.echo(f"report: {root / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
