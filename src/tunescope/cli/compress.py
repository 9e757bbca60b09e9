"""``tunescope compress``: drop top layers, remove FFN sublayers and/or prune heads of a fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunescope.cli import _options as opt

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.models import Encoder


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
    prune_heads: Annotated[
        str | None,
        typer.Option(
            "--prune-heads",
            help="Remove attention heads: a fraction (e.g. 0.3: the least important by task importance "
            "on --task) or names (e.g. layer.1.head.0,layer.2.head.3; numbered in the original model).",
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
    """Apply what the analysis found: drop top layers, remove FFN sublayers, prune heads, then export.

    The steps run in that order: --drop-top K keeps layers 1..L-K, --remove-ffn removes the FFN of the
    layers named (which must remain), and --prune-heads removes attention heads of the layers that
    remain. A fraction chooses the least important heads of the model after the first two steps
    (gradient importance on the --task examples, normalised per layer, Michel et al. 2019); names
    (layer.L.head.H) choose them yourself. At least one head of every layer is kept.

    The result is a Hugging Face folder. Dropping layers alone gives a folder that plain transformers
    loads (AutoModelForSequenceClassification). Pruned heads are saved at full size with their weights
    zero, so plain transformers computes the same outputs; tunescope.load_classifier gives back the
    smaller model. Plain transformers cannot represent a removed FFN: the folder records the removed
    layers in its config (tunescope_removed_ffn) and must be loaded with tunescope.load_classifier /
    load_encoder, which remove them again (plain from_pretrained would rebuild them with random
    weights). Prints the parameters before and after and, with --task, the metric before and after on
    the split (no retraining).

    Examples:

        tunescope compress tuned --drop-top 2 --out tuned-small

        tunescope compress tuned --drop-top 1 --remove-ffn 2,5 --task movie-sentiment --out tuned-small

        tunescope compress tuned --prune-heads 0.3 --task movie-sentiment --out tuned-pruned

        tunescope compress tuned --prune-heads layer.1.head.0,layer.2.head.3 --out tuned-pruned
    """
    from tunescope.errors import InputError
    from tunescope.pipeline import resolve_device
    from tunescope.surgery import count_parameters, export, truncate
    from tunescope.truncation import evaluate_pair

    folder = opt.new_output_dir(out)
    ffn_layers = opt.layer_list(remove_ffn, "--remove-ffn") or ()
    fraction, names = _head_request(prune_heads)
    if drop_top is None and not ffn_layers and fraction is None and not names:
        raise InputError(
            "nothing to do: pass --drop-top K, --remove-ffn LAYERS (e.g. 2,5) and/or --prune-heads "
            "(a fraction such as 0.3, or names such as layer.1.head.0)"
        )
    if drop_top is not None and drop_top < 1:
        raise InputError(f"--drop-top {drop_top} drops nothing; pass K >= 1 (or leave it out)")
    task_obj = opt.get_task(task)
    if fraction is not None and task_obj is None:
        raise InputError(
            f"--prune-heads {prune_heads} chooses heads by their importance on a task: add --task T, or name "
            "the heads (e.g. --prune-heads layer.1.head.0,layer.2.head.3)"
        )
    model = opt.load_tuned(tuned, resolve_device(device), "tunescope compress")
    n_layers = model.num_layers
    kept = _check_layers(tuned, n_layers, drop_top, ffn_layers)
    chosen = _check_heads(model, names, fraction, kept, drop_top) if (names or fraction is not None) else {}
    examples = None
    if task_obj is not None:
        opt.check_task_head(model, task_obj, "compress a model fine-tuned for this task, or leave out --task")
        examples = opt.task_examples(task_obj, split, data_dir, limit)

    small = model if kept == n_layers else truncate(model, kept)
    if ffn_layers:
        from tunescope.surgery import remove_ffn as drop_ffn

        small = drop_ffn(small, ffn_layers)
    if fraction is not None and examples is not None:
        chosen = _least_important(small, examples, fraction, batch_size=batch_size, max_length=max_length)
    if chosen:
        from tunescope.surgery import prune_heads as cut_heads

        small = cut_heads(small, chosen)
    metric = None
    if task_obj is not None and examples is not None:
        values = evaluate_pair(
            model, small, examples, task_obj, batch_size=batch_size, max_length=max_length, progress=True
        )
        metric = opt.metric_line(task_obj, split, examples, *values)
    export(small, folder)
    removed = ",".join(str(layer) for layer in sorted(set(ffn_layers)))
    line = f"layers: {n_layers} -> {kept}" + (f", FFN removed in layers {removed}" if removed else "")
    if chosen:
        line += f", {_describe_heads(chosen, kept * model.num_heads)}"
    typer.echo(line)
    typer.echo(opt.before_after("parameters", count_parameters(model), count_parameters(small)))
    if metric is not None:
        typer.echo(metric)
    if ffn_layers:
        typer.echo(
            f"model saved to {folder}; load it with tunescope.load_classifier (plain transformers "
            "cannot represent a removed FFN and would rebuild it with random weights)"
        )
    elif chosen:
        typer.echo(
            f"model saved to {folder}; tunescope.load_classifier loads the smaller model (plain "
            "AutoModelForSequenceClassification.from_pretrained computes the same outputs at full size, "
            "the removed heads' weights zero)"
        )
    else:
        typer.echo(f"model saved to {folder} (loads with AutoModelForSequenceClassification.from_pretrained)")


def _head_request(value: str | None) -> tuple[float | None, tuple[str, ...]]:
    """``--prune-heads``: a fraction in [0, 1), or head names; checked for form only (no model yet)."""
    from tunescope.errors import InputError

    if value is None:
        return None, ()
    try:
        fraction = float(value)
    except ValueError:
        names = opt.name_list(value) or ()
        if not names:
            raise InputError(
                f"--prune-heads {value!r} names no head; pass a fraction (e.g. 0.3) or names such as "
                "layer.1.head.0,layer.2.head.3"
            ) from None
        return None, names
    if not 0 <= fraction < 1:
        raise InputError(
            f"--prune-heads {value} must be a fraction in [0, 1) (e.g. 0.3 removes 30% of the heads) or "
            "head names such as layer.1.head.0"
        )
    return fraction, ()


def _check_heads(
    model: Encoder, names: tuple[str, ...], fraction: float | None, kept: int, drop_top: int | None
) -> dict[int, list[int]]:
    """The named heads (original numbering), checked against the layers that remain; for a fraction,
    a dry run on the remaining layers that refuses one removing no head; ``{}`` then."""
    from tunescope.errors import InputError
    from tunescope.models.head_pruning import parse_heads

    n_heads = model.num_heads
    if fraction is not None:
        opt.check_head_fraction(fraction, kept, n_heads, "--prune-heads")
        return {}
    chosen = parse_heads(list(names), model.num_layers, n_heads, "--prune-heads")
    for layer, heads in chosen.items():
        if layer > kept:
            raise InputError(
                f"--prune-heads layer.{layer}.head.{heads[0]}: layer {layer} is dropped by --drop-top "
                f"{drop_top} (layers 1..{kept} remain)"
            )
        if len(heads) == n_heads:
            raise InputError(
                f"--prune-heads removes all {n_heads} heads of layer {layer}; keep at least one head per "
                "layer"
            )
    return chosen


def _least_important(
    model: Encoder, examples: Examples, fraction: float, *, batch_size: int, max_length: int
) -> dict[int, list[int]]:
    """The ``fraction`` of heads with the lowest task importance (normalised per layer) in ``model``."""
    from tunescope.heads import head_importance, least_important

    scores = head_importance(model, examples, "task", batch_size=batch_size, max_length=max_length)
    return least_important(scores, fraction)


def _describe_heads(chosen: dict[int, list[int]], total: int) -> str:
    from tunescope.locations import location

    removed = [location(layer, head=h) for layer, heads in sorted(chosen.items()) for h in heads]
    if len(removed) <= 6:
        return f"heads removed: {', '.join(removed)}"
    per_layer = ", ".join(f"layer {layer}: {len(h)}" for layer, h in sorted(chosen.items()))
    return f"{len(removed)} of {total} heads removed ({per_layer})"


def _check_layers(tuned: str, n_layers: int, drop_top: int | None, ffn_layers: tuple[int, ...]) -> int:
    """The layers kept after ``--drop-top``; every ``--remove-ffn`` layer must be one of them."""
    from tunescope.errors import InputError

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
    return kept


def register(app: typer.Typer) -> None:
    """Add the ``compress`` command to ``app``."""
    app.command("compress")(compress)
