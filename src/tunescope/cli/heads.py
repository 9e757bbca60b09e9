"""``tunescope heads``: attention-head importance, a head-pruning curve, and a pruned export."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunescope.cli import _options as opt

if TYPE_CHECKING:
    import torch

    from tunescope.data import Examples, Task
    from tunescope.models import Encoder

HEADS_COLUMNS = ("model", "objective", "layer", "head", "location", "importance", "normalized")
"""tunescope.heads.HEADS_COLUMNS, written out: the CLI module is imported at start-up, without torch."""
"""Columns of ``heads.csv``: ``importance`` is the raw score, ``normalized`` it divided by its layer's L2
norm."""

RANKINGS = ("task", "mlm", "kl", "random")
"""What --rank-by accepts: the objectives, or a seeded random ranking (the control)."""

Table = tuple[str, list[dict[str, Any]], Sequence[str]]
"""A table to write: file name, rows, columns."""


def heads(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Model folder or hub id: a fine-tuned sequence classifier or a base encoder "
            "(default: the embedded model)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="New (or empty) folder for heads.csv (and pruning.csv)."),
    ] = None,
    task: opt.Task = None,
    objective: Annotated[
        str | None,
        typer.Option(
            "--objective",
            help="Loss the importance is the gradient of: task, mlm or kl (default: task for a fine-tuned "
            "classifier, else kl).",
        ),
    ] = None,
    curve: Annotated[
        bool,
        typer.Option("--prune-curve", help="Also mask heads step by step and evaluate: OUT/pruning.csv."),
    ] = False,
    rank_by: Annotated[
        str | None,
        typer.Option(
            "--rank-by",
            help="With --prune-curve: rank heads by task, mlm, kl or random (default: --objective).",
        ),
    ] = None,
    step: Annotated[
        float | None,
        typer.Option("--step", help="With --prune-curve: share of all heads masked per step (default 0.1)."),
    ] = None,
    prune: Annotated[
        float | None,
        typer.Option(
            "--prune",
            help="Remove this fraction of all heads, the least important (normalised per layer); needs "
            "--export.",
        ),
    ] = None,
    export_dir: Annotated[
        Path | None,
        typer.Option("--export", help="New (or empty) folder for the pruned model (with --prune)."),
    ] = None,
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = 1000,
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    max_length: opt.MaxLength = 128,
    device: opt.Device = "auto",
    seed: Annotated[
        int, typer.Option("--seed", help="Seeds the MLM masks, the kl projections and the random ranking.")
    ] = 0,
    fit_mlm_head: Annotated[
        bool,
        typer.Option(
            "--fit-mlm-head/--no-fit-mlm-head",
            help="For --objective mlm on a checkpoint without MLM head: fit one on the frozen encoder "
            "(labelled 'mlm (fitted head)'), or refuse.",
        ),
    ] = True,
) -> None:
    """Score every attention head (Michel et al. 2019), optionally prune the least important ones.

    The importance of head h in layer l is |d loss / d g| for a gate g on the head's output, averaged
    over the examples of --task (one forward and one backward per batch). Objectives: task (the
    classifier's own loss on labelled examples; the default for a fine-tuned sequence classifier), mlm
    (masked-LM loss, with the checkpoint's MLM head or one fitted here) and kl (label-free: how far the
    gated model moves from the ungated one; the default for a base encoder).

    Writes OUT/heads.csv (model, objective, layer, head, location, importance = raw score,
    normalized = divided by its layer's L2 norm) and prints each layer's most and least important head.

    --prune-curve also masks the least important heads a step at a time, re-scoring after each step,
    and writes OUT/pruning.csv: the task metric after each step for a fine-tuned classifier, else the
    kl measures (hidden_mse for a base encoder).

    --prune F --export DIR removes the F least important heads for good (smaller Q, K, V and output
    projections), prints the parameters and, for a fine-tuned classifier, the metric before and after,
    and saves the model to DIR (load it with tunescope.load_classifier / load_encoder).

    Examples:

        tunescope heads --task movie-sentiment --limit 200 --out heads-minilm

        tunescope heads tuned --task movie-sentiment --prune-curve --out heads-tuned

        tunescope heads tuned --task movie-sentiment --prune 0.3 --export tuned-pruned --out heads-tuned
    """
    from tunescope.errors import InputError
    from tunescope.pipeline import resolve_device

    folder = opt.new_output_dir(out)
    target = _check_prune(prune, export_dir, folder)
    _check_name("objective", objective, RANKINGS[:-1])
    _check_name("rank-by", rank_by, RANKINGS)
    if not curve and (rank_by is not None or step is not None):
        given = "--rank-by" if rank_by is not None else "--step"
        raise InputError(f"{given} only applies to the pruning curve; add --prune-curve")
    step = 0.1 if step is None else step
    if not 0 < step < 1:
        raise InputError(f"--step {step} must be in (0, 1); e.g. 0.1 masks 10% of the heads per step")
    task_obj = opt.get_task(task)
    if task_obj is None:
        raise InputError("tunescope heads needs --task T: the examples the heads are scored on")
    trained, chosen, evaluated, ranking = _objectives(model, objective, rank_by, curve)
    needs_task = {chosen, *((ranking, evaluated) if curve else ())}
    examples = opt.task_examples(task_obj, split, data_dir, limit)
    labelled = examples.labels is not None
    if "task" in needs_task and not labelled:
        from tunescope.errors import DataError

        raise DataError(
            f"the task objective needs labels but {task_obj.name} {split} has none; pass a labelled --split "
            "(e.g. validation), or the label-free --objective kl or mlm"
        )

    encoder = _load(model, trained, resolve_device(device))
    _check_model(encoder, task_obj, needs_task, {chosen, ranking} if curve else {chosen}, fit_mlm_head)
    if prune is not None:
        opt.check_head_fraction(prune, encoder.num_layers, encoder.num_heads, "--prune")

    settings: dict[str, Any] = {
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
        "fit_mlm_head": fit_mlm_head,
    }
    result, normalized, tables, curve_rows = _compute(
        encoder, examples, chosen, (ranking, evaluated, step) if curve else None, settings
    )
    pruned: list[str] = []
    if prune is not None and target is not None:
        pruned = _prune_and_export(
            encoder,
            normalized,
            prune,
            target,
            (task_obj, split, examples) if trained and labelled else None,
            batch_size=batch_size,
            max_length=max_length,
        )
    written = _write_tables(folder, tables)
    _print_table(encoder, result.label, normalized, task_obj, split, examples)
    if curve_rows:
        _print_curve(curve_rows)
    for line in pruned:
        typer.echo(line)
    typer.echo("tables: " + ", ".join(str(p) for p in written))


# ------------------------------------------------------------------------------------------------
# checks, all before the model is scored
# ------------------------------------------------------------------------------------------------
def _check_name(option: str, value: str | None, valid: Sequence[str]) -> None:
    from tunescope.errors import UnknownNameError

    if value is not None and value not in valid:
        raise UnknownNameError(f"--{option}", value, valid)


def _check_prune(prune: float | None, export_dir: Path | None, folder: Path) -> Path | None:
    """The --export folder, checked: given with --prune (and only then), new or empty, not --out."""
    from tunescope.errors import InputError

    if (prune is None) != (export_dir is None):
        raise InputError(
            "--prune FRACTION and --export DIR go together: --prune says how many heads to remove, "
            "--export where the pruned model goes"
        )
    if prune is None or export_dir is None:
        return None
    if not 0 <= prune < 1:  # checked again with the model's size once it is loaded
        raise InputError(f"--prune {prune} must be in [0, 1); e.g. 0.3 removes 30% of the heads")
    target = opt.new_output_dir(export_dir, "--export")
    if target.resolve() == folder.resolve():
        raise InputError(f"--export {target} is the --out folder; give the pruned model its own folder")
    return target


def _saved_classes(model: str | None) -> list[str] | None:
    """The classes the checkpoint's config names (``...ForSequenceClassification``: a trained head).

    ``None`` when the config cannot be read: the loader then says what is wrong, in one line.
    """
    import transformers

    from tunescope.models.loading import _CONFIG_ERRORS, default_model_path

    ref = os.fspath(default_model_path()) if model is None else model
    try:
        config = transformers.AutoConfig.from_pretrained(ref)
    except _CONFIG_ERRORS:
        return None
    return [str(a) for a in (getattr(config, "architectures", None) or [])]


def _load(model: str | None, trained: bool, device: torch.device) -> Encoder:
    from tunescope.models import load_encoder

    if trained and model is not None:
        return opt.load_tuned(model, device, "tunescope heads")
    return load_encoder(model, device=device)


def _objectives(
    model: str | None, objective: str | None, rank_by: str | None, curve: bool
) -> tuple[bool, str, str, str]:
    """(trained head?, the objective scored, the one a curve evaluates, the one it ranks by), checked
    against the saved config before the model is loaded."""
    from tunescope.errors import InputError

    saved = _saved_classes(model)
    trained = saved is not None and any(a.endswith("ForSequenceClassification") for a in saved)
    chosen = objective or ("task" if trained else "kl")
    evaluated = "task" if trained else "kl"
    ranking = rank_by or chosen
    needs_task = {chosen, *((ranking, evaluated) if curve else ())}
    if "task" in needs_task and saved is not None and not trained:  # unreadable: the loader says why
        flag = "--objective task" if chosen == "task" else "--rank-by task"
        raise InputError(
            f"{flag} needs a fine-tuned sequence classifier, but {model or 'the embedded model'} was saved "
            f"as {', '.join(saved) or 'a model'} without a trained classifier head; fine-tune it first "
            "(tunescope finetune MODEL --task T --out DIR) or use --objective kl or mlm"
        )
    return trained, chosen, evaluated, ranking


def _compute(
    encoder: Encoder,
    examples: Examples,
    objective: str,
    curve: tuple[str, str, float] | None,
    settings: dict[str, Any],
) -> tuple[Any, torch.Tensor, list[Table], list[dict[str, Any]]]:
    """The importance map (raw, normalised) and, with ``curve`` = (rank by, evaluate, step), the curve."""
    from tunescope.heads import PRUNING_COLUMNS, head_importance_batches, normalize_by_layer, prune_curve

    result = head_importance_batches(encoder, examples, objective, normalize=False, **settings)
    normalized = normalize_by_layer(result.raw)
    tables: list[Table] = [("heads.csv", result.rows(encoder.name), HEADS_COLUMNS)]
    curve_rows: list[dict[str, Any]] = []
    if curve is not None:
        ranking, evaluated, step = curve
        curve_rows = prune_curve(
            encoder, examples, rank_by=ranking, objective=evaluated, step=step, **settings
        )
        tables.append(("pruning.csv", curve_rows, PRUNING_COLUMNS))
    return result, normalized, tables, curve_rows


def _check_model(
    encoder: Encoder, task: Task, needs_task: set[str], scored: set[str], fit_mlm_head: bool
) -> None:
    """What needs the loaded model: a head that fits the task's labels, an MLM head (or fitting one)."""
    from tunescope.errors import InputError
    from tunescope.heads import objective_label

    if "task" in needs_task:
        fix = f"score a model fine-tuned for {task.name}, or use --objective kl or mlm"
        opt.check_task_head(encoder, task, fix)
    if "mlm" in scored and not fit_mlm_head and objective_label(encoder, "mlm") != "mlm":
        raise InputError(
            f"--objective mlm: {encoder.name} has no pre-trained masked-LM head and --no-fit-mlm-head "
            "forbids fitting one; leave out --no-fit-mlm-head (a head is fitted on the frozen encoder, "
            "labelled 'mlm (fitted head)'), or pass a checkpoint saved with its MLM head"
        )


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
def _prune_and_export(
    encoder: Encoder,
    normalized: torch.Tensor,
    fraction: float,
    target: Path,
    evaluation: tuple[Task, str, Examples] | None,
    *,
    batch_size: int,
    max_length: int,
) -> list[str]:
    """Remove the ``fraction`` least important heads, evaluate, export; the lines to print."""
    from tunescope.heads import least_important
    from tunescope.surgery import count_parameters, export, prune_heads

    chosen = least_important(normalized, fraction)
    small = prune_heads(encoder, chosen)
    metric = None
    if evaluation is not None:
        from tunescope.truncation import evaluate_pair

        task, split, examples = evaluation
        values = evaluate_pair(
            encoder, small, examples, task, batch_size=batch_size, max_length=max_length, progress=True
        )
        metric = opt.metric_line(task, split, examples, *values)
    export(small, target)
    total = encoder.num_layers * encoder.num_heads
    removed = sum(len(h) for h in chosen.values())
    per_layer = ", ".join(f"layer {layer}: {len(h)}" for layer, h in sorted(chosen.items()))
    lines = [f"heads removed: {removed} of {total} ({per_layer})"]
    lines.append(opt.before_after("parameters", count_parameters(encoder), count_parameters(small)))
    if metric is not None:
        lines.append(metric)
    loader = "load_classifier" if evaluation is not None else "load_classifier / load_encoder"
    lines.append(
        f"model saved to {target}; load it with tunescope.{loader} to get the smaller model (plain "
        "from_pretrained computes the same outputs at full size, the removed heads' weights zero)"
    )
    return lines


def _write_tables(folder: Path, tables: Sequence[Table]) -> list[Path]:
    """Write every table or none: each goes to a temporary beside it; all are renamed once all are written."""
    import contextlib

    from tunescope._io import atomic_path, write_csv

    created = not folder.exists()
    paths = [folder / name for name, _, _ in tables]
    try:
        with contextlib.ExitStack() as stack:
            for path, (_, rows, columns) in zip(paths, tables, strict=True):
                write_csv(stack.enter_context(atomic_path(path)), rows, columns)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if nothing is left in it
        raise
    return paths


def _print_table(
    encoder: Encoder, label: str, normalized: torch.Tensor, task: Task, split: str, examples: Examples
) -> None:
    from tunescope.locations import location

    typer.echo(
        f"head importance of {encoder.name} on {task.name} {split} ({len(examples)} examples), objective "
        f"{label}, normalised per layer:"
    )
    typer.echo(f"{'layer':>5}  {'most important':<24}  least important")
    for layer in range(normalized.shape[0]):
        row = normalized[layer]
        top, low = int(row.argmax()), int(row.argmin())
        most = f"{location(layer + 1, head=top):<16} {float(row[top]):.3f}"
        least = f"{location(layer + 1, head=low):<16} {float(row[low]):.3f}"
        typer.echo(f"{layer + 1:>5}  {most:<24}  {least}")


def _print_curve(rows: list[dict[str, Any]]) -> None:
    metric = rows[0]["metric"]
    shown = [r for r in rows if r["metric"] == metric]
    typer.echo(
        f"pruning curve (ranked by {rows[0]['rank_by']}, re-scored after each step; objective "
        f"{rows[0]['objective']}):"
    )
    typer.echo(f"{'heads pruned':>12}  {metric:>12}")
    for row in shown:
        pruned = f"{row['heads_pruned']} ({100 * row['heads_pruned_fraction']:.0f}%)"
        typer.echo(f"{pruned:>12}  {row['value']:>12.4f}")


def register(app: typer.Typer) -> None:
    """Add the ``heads`` command to ``app``."""
    app.command("heads")(heads)
