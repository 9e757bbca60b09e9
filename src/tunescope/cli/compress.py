"""``tunescope compress``: drop top layers and/or remove FFN sublayers of a fine-tuned model, and export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def compress(
    tuned: opt.Tuned,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="New (or empty) folder for the model.")
    ] = None,
    drop_top: Annotated[
        int | None, typer.Option("--drop-top", help="Drop the top K transformer layers (keep 1..L-K).")
    ] = None,
    remove_ffn: Annotated[
        str | None,
        typer.Option(
            "--remove-ffn",
            help="Remove the FFN sublayer of these layers (e.g. 2,5; numbered in the original model).",
        ),
    ] = None,
    task: opt.Task = None,
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = 1000,
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    max_length: opt.MaxLength = 128,
    device: opt.Device = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Accepted for uniformity; nothing here is random.")] = 0,
) -> None:
    """Apply what the analysis found: drop top layers and/or remove FFN sublayers, then export.

    The result is a Hugging Face folder. Dropping layers alone gives a folder that plain transformers
    loads (AutoModelForSequenceClassification). Plain transformers cannot represent a removed FFN: the
    folder records the removed layers in its config (tunescope_removed_ffn) and must be loaded with
    tunescope.load_classifier / load_encoder, which remove them again (plain from_pretrained would
    rebuild them with random weights). Prints the parameters before and after and, with --task, the
    metric before and after on the split (no retraining).

    Examples:

        tunescope compress tuned --drop-top 2 --out tuned-small

        tunescope compress tuned --drop-top 1 --remove-ffn 2,5 --task movie-sentiment --out tuned-small
    """
    from tunescope.errors import InputError
    from tunescope.pipeline import resolve_device
    from tunescope.surgery import count_parameters, export, truncate
    from tunescope.truncation import evaluate_pair

    folder = opt.new_output_dir(out)
    ffn_layers = opt.layer_list(remove_ffn, "--remove-ffn") or ()
    if drop_top is None and not ffn_layers:
        raise InputError("nothing to do: pass --drop-top K and/or --remove-ffn LAYERS (e.g. 2,5)")
    if drop_top is not None and drop_top < 1:
        raise InputError(f"--drop-top {drop_top} drops nothing; pass K >= 1 (or leave it out)")
    task_obj = opt.get_task(task)
    model = opt.load_tuned(tuned, resolve_device(device), "tunescope compress")
    n_layers = model.num_layers
    kept = n_layers - (drop_top or 0)
    if kept < 1:
        raise InputError(
            f"--drop-top {drop_top} leaves no layer of {tuned}'s {n_layers}; choose K in 1..{n_layers - 1}"
        )
    for layer in ffn_layers:
        if not 1 <= layer <= n_layers:
            raise InputError(f"--remove-ffn {layer}: {tuned} has transformer layers 1..{n_layers}")
        if layer > kept:
            raise InputError(
                f"--remove-ffn {layer}: layer {layer} is dropped by --drop-top {drop_top} "
                f"(layers 1..{kept} remain)"
            )

    small = model if kept == n_layers else truncate(model, kept)
    if ffn_layers:
        from tunescope.surgery import remove_ffn as drop_ffn

        small = drop_ffn(small, ffn_layers)
    metric = None
    if task_obj is not None:
        examples = opt.task_examples(task_obj, split, data_dir, limit)
        values = evaluate_pair(
            model, small, examples, task_obj, batch_size=batch_size, max_length=max_length, progress=True
        )
        metric = opt.metric_line(task_obj, split, examples, *values)
    export(small, folder)
    removed = ",".join(str(layer) for layer in sorted(set(ffn_layers)))
    typer.echo(f"layers: {n_layers} -> {kept}" + (f", FFN removed in layers {removed}" if removed else ""))
    typer.echo(opt.before_after("parameters", count_parameters(model), count_parameters(small)))
    if metric is not None:
        typer.echo(metric)
    if ffn_layers:
        typer.echo(
            f"model saved to {folder}; load it with tunescope.load_classifier (plain transformers "
            "cannot represent a removed FFN and would rebuild it with random weights)"
        )
    else:
        typer.echo(f"model saved to {folder} (loads with AutoModelForSequenceClassification.from_pretrained)")


def register(app: typer.Typer) -> None:
    """Add the ``compress`` command to ``app``."""
    app.command("compress")(compress)
