"""``tunescope finetune``: fine-tune a model on a task and save it as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def finetune(
    model: Annotated[
        str | None, typer.Argument(help="Model folder or hub id (default: the embedded model).")
    ] = None,
    task: opt.Task = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (new, or this run's).")
    ] = None,
    train_layers: Annotated[
        str | None,
        typer.Option("--train-layers", help="Train only these layers (e.g. 4,5,6; 'none': the head alone)."),
    ] = None,
    classifier_layer: Annotated[
        int | None, typer.Option("--classifier-layer", help="Cut the model after layer k; head on top.")
    ] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="lora (needs peft).")] = None,
    adapter_layers: Annotated[
        str | None, typer.Option("--adapter-layers", help="Layers that get adapters (default: all).")
    ] = None,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.")] = 8,
    epochs: Annotated[int, typer.Option("--epochs")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 5e-5,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio")] = 0.1,
    max_length: Annotated[int, typer.Option("--max-length")] = 128,
    keep_best: Annotated[
        bool, typer.Option("--keep-best/--keep-last", help="Save the best epoch (validation) or the last.")
    ] = True,
    train_limit: Annotated[
        int | None, typer.Option("--train-limit", help="Use the first N training examples.")
    ] = None,
    validation_limit: Annotated[
        int | None, typer.Option("--validation-limit", help="Use the first N validation examples.")
    ] = None,
    data_dir: opt.DataDir = None,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Fine-tune MODEL on a task; print the best validation metric and the output folder.

    Interrupted runs resume from their last complete epoch when rerun with the same options.

    Examples:

        tunescope finetune --task movie-sentiment --out tuned --epochs 3

        tunescope finetune path/to/model --task rte --data-dir glue --out tuned --train-layers 5,6

        tunescope finetune --task movie-sentiment --out tuned-k4 --classifier-layer 4

        tunescope finetune --task movie-sentiment --out tuned-lora --adapter lora --lr 5e-4
    """
    from tunescope.errors import InputError
    from tunescope.finetune import FinetuneConfig
    from tunescope.finetune import finetune as run_finetune
    from tunescope.pipeline import resolve_device

    if task is None:
        raise InputError("--task is required (see `tunescope tasks`), e.g. --task movie-sentiment")
    if out is None:
        raise InputError("--out DIR is required: the folder the fine-tuned model is written to")
    config = FinetuneConfig(
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        warmup_ratio=warmup_ratio,
        max_length=max_length,
        seed=seed,
        train_layers=opt.layer_list(train_layers, "--train-layers"),
        classifier_layer=classifier_layer,
        adapter=adapter,  # type: ignore[arg-type]  # checked against ADAPTER_METHODS
        lora_r=lora_r,
        adapter_layers=opt.layer_list(adapter_layers, "--adapter-layers"),
        keep_best=keep_best,
    )
    result = run_finetune(
        model,
        task,
        out,
        config=config,
        data_dir=data_dir,
        train_limit=train_limit,
        validation_limit=validation_limit,
        device=resolve_device(device),
    )
    typer.echo(
        f"best {result.metric} {result.best_value:.4f} at epoch {result.best_epoch}/{config.epochs} "
        f"({result.trainable_parameters:,} of {result.total_parameters:,} parameters trained, "
        f"{result.train_seconds:.1f} s); model saved to {result.path}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to ``app``."""
    app.command("finetune")(finetune)
