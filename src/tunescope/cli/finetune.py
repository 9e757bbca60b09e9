"""``tunescope finetune``: fine-tune a model on a task and save it as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunescope.cli import _options as opt

if TYPE_CHECKING:
    from tunescope.data.tokens import TokenExamples


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
    patience: Annotated[
        int | None,
        typer.Option(
            "--patience",
            help="Stop once the validation metric has not improved for N epochs (--epochs: the most).",
        ),
    ] = None,
    group_by_length: Annotated[
        bool,
        typer.Option(
            "--group-by-length/--random-batches",
            help="Batch examples of similar length together (less padding) or shuffle them at random.",
        ),
    ] = True,
    precision: opt.Precision = "fp32",
    train_limit: Annotated[
        int | None, typer.Option("--train-limit", min=0, help="Use the first N training examples (0 = all).")
    ] = None,
    validation_limit: Annotated[
        int | None,
        typer.Option("--validation-limit", min=0, help="Use the first N validation examples (0 = all)."),
    ] = None,
    data_dir: opt.DataDir = None,
    conllu: Annotated[
        Path | None,
        typer.Option("--conllu", help="CoNLL-U treebank: train a tagger on its gold tags (no --task)."),
    ] = None,
    tag_field: Annotated[
        str | None, typer.Option("--tag-field", help="With --conllu: upos (default), xpos or deprel.")
    ] = None,
    conllu_validation: Annotated[
        Path | None,
        typer.Option(
            "--conllu-validation",
            help="CoNLL-U file to validate on (default: 10% of the --conllu sentences, chosen by --seed).",
        ),
    ] = None,
    silver: Annotated[
        str | None,
        typer.Option(
            "--silver",
            help="Train a tagger on spaCy's silver tags (pos, tag or dep) of the --task or --data texts.",
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="With --silver: your CSV/TSV/JSONL file of texts.")
    ] = None,
    text: opt.TextColumn = None,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Fine-tune MODEL on a task; print the best validation metric and the output folder.

    Interrupted runs resume from their last complete epoch when rerun with the same options.

    Token tasks (a tagger, AutoModelForTokenClassification, scored by word accuracy): --conllu FILE
    trains on a treebank's gold tags (--tag-field upos|xpos|deprel) and validates on
    --conllu-validation FILE or on 10% of the sentences held out by --seed; --silver pos|tag|dep trains
    on spaCy's tags of the task's texts (its train and validation splits; the first text of a pair) or
    of --data FILE --text COLUMN (10% held out). Contrast a syntactic task with a sentence task.

    Examples:

        tunescope finetune --task movie-sentiment --out tuned --epochs 3

        tunescope finetune --task movie-sentiment --out tuned --epochs 6 --patience 1

        tunescope finetune path/to/model --task rte --data-dir glue --out tuned --train-layers 5,6

        tunescope finetune --task movie-sentiment --out tuned-k4 --classifier-layer 4

        tunescope finetune --task movie-sentiment --out tuned-lora --adapter lora --lr 5e-4

        tunescope finetune --conllu en_ewt-ud-train.conllu --tag-field upos --out tagger

        tunescope finetune --task movie-sentiment --silver pos --train-limit 2000 --out tagger-pos
    """
    from tunescope._io import check_output_dir
    from tunescope.errors import InputError
    from tunescope.finetune import FinetuneConfig
    from tunescope.finetune import finetune as run_finetune
    from tunescope.pipeline import resolve_device

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
        patience=patience,
        group_by_length=group_by_length,
        precision=precision,  # type: ignore[arg-type]  # checked against PRECISIONS
    )
    tokens = _token_data(
        conllu=conllu,
        tag_field=tag_field,
        conllu_validation=conllu_validation,
        silver=silver,
        task=task,
        data=data,
        text=text,
        data_dir=data_dir,
        train_limit=train_limit or None,
        validation_limit=validation_limit or None,
        seed=seed,
        out=out,
    )
    if tokens is None and task is None:
        raise InputError("--task is required (see `tunescope tasks`), e.g. --task movie-sentiment")
    if out is None:
        raise InputError("--out DIR is required: the folder the fine-tuned model is written to")
    check_output_dir(out)
    train, validation = tokens if tokens is not None else (None, None)
    result = run_finetune(
        model,
        None if tokens is not None else task,
        out,
        config=config,
        train=train,
        validation=validation,
        data_dir=data_dir,
        train_limit=train_limit or None,
        validation_limit=validation_limit or None,
        device=resolve_device(device),
    )
    if result.stopped_early:
        typer.echo(
            f"stopped early after epoch {result.stopped_epoch}/{config.epochs}: {result.metric} had not "
            f"improved for {config.patience} epoch(s)"
        )
    typer.echo(
        f"best {result.metric} {result.best_value:.4f} at epoch {result.best_epoch}/{config.epochs} "
        f"({result.trainable_parameters:,} of {result.total_parameters:,} parameters trained, "
        f"{result.train_seconds:.1f} s); model saved to {result.path}"
    )
    if tokens is not None:
        names = tokens[0].tag_names
        typer.echo(
            f"a tagger of {len(names)} {tokens[0].task} tags ({len(tokens[0])} training sentences); "
            "it loads with AutoModelForTokenClassification.from_pretrained"
        )


def _token_data(
    *,
    conllu: Path | None,
    tag_field: str | None,
    conllu_validation: Path | None,
    silver: str | None,
    task: str | None,
    data: Path | None,
    text: str | None,
    data_dir: Path | None,
    train_limit: int | None,
    validation_limit: int | None,
    seed: int,
    out: Path | None,
) -> tuple[TokenExamples, TokenExamples] | None:
    """The (train, validation) tagging data the token options ask for; ``None`` for a sentence task."""
    from tunescope.errors import InputError

    if conllu is not None and silver is not None:
        raise InputError("give either --conllu (gold tags) or --silver (spaCy tags), not both")
    if conllu is None:
        for name, value in (("--tag-field", tag_field), ("--conllu-validation", conllu_validation)):
            if value is not None:
                raise InputError(f"{name} goes with --conllu FILE (a CoNLL-U treebank); pass --conllu")
    if silver is None and (data is not None or text is not None):
        raise InputError("--data/--text are read with --silver here; sentence tasks take --task")
    if out is None and (conllu is not None or silver is not None):
        raise InputError("--out DIR is required: the folder the fine-tuned model is written to")
    if conllu is not None:
        if task is not None:
            raise InputError("--conllu gives the data and the tags; drop --task")
        from tunescope.data.conllu import conllu_train_validation

        return conllu_train_validation(
            conllu,
            field=tag_field or "upos",
            validation=conllu_validation,
            seed=seed,
            what=f"--conllu {conllu}",
            fix="--conllu-validation FILE",
        )
    if silver is not None:
        return _silver_data(silver, task, data, text, data_dir, train_limit, validation_limit, seed)
    return None


def _silver_data(
    field: str,
    task: str | None,
    data: Path | None,
    text: str | None,
    data_dir: Path | None,
    train_limit: int | None,
    validation_limit: int | None,
    seed: int,
) -> tuple[TokenExamples, TokenExamples]:
    """The texts the --silver options name, tagged and split by ``silver_train_validation``."""
    from tunescope.data import get_task, load_file
    from tunescope.data.silver import SILVER_FIELDS, silver_train_validation
    from tunescope.errors import InputError, UnknownNameError

    if field not in SILVER_FIELDS:
        raise UnknownNameError("--silver field", field, SILVER_FIELDS)
    if data is not None:
        if task is not None:
            raise InputError("give either --task or --data with --silver, not both")
        if text is None:
            raise InputError("--data needs --text COLUMN naming the column that holds the text")
        texts = load_file(data, text=text).texts
        return silver_train_validation(
            texts[:train_limit] if train_limit else texts,
            field=field,
            seed=seed,
            what=f"--data {data}",
            fix="more texts",
        )
    if task is None:
        raise InputError(
            "--silver tags the texts of --task T (its train and validation splits) or --data FILE"
        )
    task_obj = get_task(task)
    train_texts = task_obj.load("train", data_dir=data_dir, limit=train_limit).texts
    split = next((s for s in task_obj.splits if s.startswith("validation")), None)
    if split is None:
        return silver_train_validation(
            train_texts, field=field, seed=seed, what=f"task {task}", fix="a task with a validation split"
        )
    val_texts = task_obj.load(split, data_dir=data_dir, limit=validation_limit).texts
    return silver_train_validation(train_texts, val_texts, field=field, seed=seed)


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to ``app``."""
    app.command("finetune")(finetune)
