"""``tunescope probe``: token-level probes on every layer of one model (or two), with control tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def probe(
    model: Annotated[str, typer.Argument(help="Pre-trained model (folder or hub id; 'default' = embedded).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/probe"),
    tuned: Annotated[
        str | None, typer.Option("--tuned", help="A fine-tuned model to probe the same way.")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Task whose texts get silver spaCy labels.")
    ] = None,
    conllu: Annotated[
        Path | None, typer.Option("--conllu", help="CoNLL-U treebank with gold labels (instead of --task).")
    ] = None,
    probe_tasks: Annotated[
        str, typer.Option("--probe-tasks", help="pos,tag,dep (silver; with --conllu: upos,xpos,deprel).")
    ] = "pos,dep",
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = 1000,
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Write OUT/probes.csv (one row per model, layer and label set), print it, and draw OUT/report.html.

    A linear probe per layer predicts each word's label; a control task gives each word type a random
    label (Hewitt & Liang 2019), and selectivity = accuracy - control accuracy. Labels are spaCy's
    (silver) for the texts of --task, or gold ones from --conllu. Sentences are split by --seed into
    train and test.

    Examples:

        tunescope probe default --task movie-sentiment --out runs/probe

        tunescope probe bert-base-uncased --tuned my-sst2 --conllu ud-dev.conllu --probe-tasks upos,deprel
    """
    from tunescope._io import write_csv
    from tunescope.errors import InputError
    from tunescope.pipeline import AnalyzeConfig, analyze, load_table, read_manifest
    from tunescope.stages.probes import COLUMNS, resolve_probe_tasks

    if task is not None and conllu is not None:
        raise InputError(
            "give either --task (silver labels of its texts) or --conllu FILE (gold labels), not both"
        )
    names = opt.name_list(probe_tasks) or ()
    if not names:
        raise InputError("--probe-tasks is empty; give e.g. pos,dep")
    resolve_probe_tasks(names, conllu)  # before anything slow
    config = AnalyzeConfig(
        out=out,
        model=None if model == "default" else model,
        tuned=tuned,
        task=task or "movie-sentiment",
        data_dir=str(data_dir) if data_dir else None,
        split=split,
        limit=limit or None,
        batch_size=batch_size,
        device=device,
        seed=seed,
        stages=("probes",),
        finetune=False,
        options={"probes": {"tasks": names, "conllu": str(conllu) if conllu else None}},
    )
    root = analyze(config)
    for note in read_manifest(root).get("notes", []):
        typer.echo(f"note: {note}", err=True)
    rows = load_table(root, "probes")
    write_csv(root / "probes.csv", rows, COLUMNS)
    if rows:
        typer.echo(
            f"{'probe_task':<16} {'model':<8} {'layer':>5} {'accuracy':>9} {'control':>8} {'selectivity':>12}"
        )
        for row in rows:
            typer.echo(
                f"{row['probe_task']:<16} {row['model']:<8} {row['layer']:>5} {float(row['accuracy']):>9.3f} "
                f"{float(row['control_accuracy']):>8.3f} {float(row['selectivity']):>12.3f}"
            )
    typer.echo(f"table: {root / 'probes.csv'}; report: {root / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
