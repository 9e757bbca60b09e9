"""``tunescope truncate``: the metric as top layers are dropped (no retraining), or export a cut model.

Also holds the helpers ``tunescope compress`` shares: loading the fine-tuned classifier, checking the
output folder, loading the evaluation examples and printing a before/after line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunescope.cli import _options as opt

if TYPE_CHECKING:
    from tunescope.data import Examples, Task
    from tunescope.models import Encoder

Tuned = Annotated[
    str, typer.Argument(help="Fine-tuned sequence classifier: a folder or hub id with its classifier head.")
]
MaxLength = Annotated[int, typer.Option("--max-length", help="Inputs are truncated to this many tokens.")]


def truncate(
    tuned: Tuned,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="New (or empty) folder: truncation.csv, or the model with --keep."),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option("--keep", help="Write the model cut after layer K to --out instead of sweeping."),
    ] = None,
    task: opt.Task = None,
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = 1000,
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    max_length: MaxLength = 128,
    device: opt.Device = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Accepted for uniformity; nothing here is random.")] = 0,
) -> None:
    """Cut a fine-tuned classifier after layer k, without retraining.

    Without --keep: for k = L..1, evaluate the model cut after layer k on the task split with the task's
    metric; write OUT/truncation.csv (layers_kept, metric, value, params, seconds_per_batch), print the
    table and the fewest layers within 1 point of the full model.

    With --keep K: write the model cut after layer K to OUT as a Hugging Face folder that plain
    transformers loads (AutoModelForSequenceClassification); print the parameters before and after and,
    with --task, the metric before and after.

    Examples:

        tunescope truncate tuned --task movie-sentiment --out trunc

        tunescope truncate tuned --task movie-sentiment --keep 4 --out tuned-k4

        tunescope truncate my-sst2 --task sst2 --data-dir glue --limit 0 --out trunc-sst2
    """
    from tunescope.errors import InputError
    from tunescope.pipeline import resolve_device

    folder = opt.new_output_dir(out)
    if keep is not None and keep < 1:
        raise InputError(f"--keep {keep} keeps no transformer layer; pass --keep K with K >= 1")
    task_obj = get_task(task)
    if keep is None and task_obj is None:
        raise InputError("the truncation sweep needs --task T to evaluate on (or pass --keep K to export)")
    torch_device = resolve_device(device)
    model = load_tuned(tuned, torch_device, "tunescope truncate")
    if keep is not None and keep > model.num_layers:
        raise InputError(f"--keep {keep} is more layers than {tuned} has; choose K in 1..{model.num_layers}")
    examples = None if task_obj is None else task_examples(task_obj, split, data_dir, limit)
    if keep is None:
        if task_obj is not None and examples is not None:  # checked above; narrows the types
            _sweep(model, examples, task_obj, folder, batch_size=batch_size, max_length=max_length)
        return

    from tunescope.surgery import count_parameters, export
    from tunescope.surgery import truncate as cut

    small = cut(model, keep)
    metric = None
    if task_obj is not None and examples is not None:
        values = evaluate_pair(model, small, examples, task_obj, batch_size, max_length)
        metric = metric_line(task_obj, split, examples, *values)
    export(small, folder)
    typer.echo(f"layers: {model.num_layers} -> {keep}")
    typer.echo(before_after("parameters", count_parameters(model), count_parameters(small)))
    if metric is not None:
        typer.echo(metric)
    typer.echo(f"model saved to {folder} (loads with AutoModelForSequenceClassification.from_pretrained)")


def _sweep(
    model: Encoder, examples: Examples, task: Task, folder: Path, *, batch_size: int, max_length: int
) -> None:
    from tunescope._io import write_csv
    from tunescope.stages.truncation import COLUMNS, recommend, truncation_sweep

    rows = truncation_sweep(
        model, examples, task, batch_size=batch_size, max_length=max_length, progress=True
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "truncation.csv", rows, COLUMNS)
    typer.echo(
        f"{task.metric} of {model.name} on {task.name} ({len(examples)} examples) "
        "with the top layers dropped, no retraining:"
    )
    typer.echo(f"{'layers kept':>11}  {task.metric:>10}  {'parameters':>12}  {'s/batch':>8}")
    for row in rows:
        typer.echo(
            f"{row['layers_kept']:>11}  {row['value']:>10.4f}  {row['params']:>12,}  "
            f"{row['seconds_per_batch']:>8.4f}"
        )
    typer.echo(_recommendation(rows, recommend(rows), task.metric))
    typer.echo(f"table: {folder / 'truncation.csv'}")


def _recommendation(rows: list[dict[str, Any]], best: dict[str, Any] | None, metric: str) -> str:
    full = max(rows, key=lambda r: int(r["layers_kept"]))
    if best is None:
        return f"no recommendation: the full model's {metric} is undefined (NaN)"
    n_layers, k = int(full["layers_kept"]), int(best["layers_kept"])
    if k == n_layers:
        return (
            f"recommendation: keep all {n_layers} layers; dropping even the top layer costs more than "
            f"1 point of {metric}"
        )
    change = 100 * (float(best["value"]) - float(full["value"]))
    saved = int(full["params"]) - int(best["params"])
    return (
        f"recommendation: keep {k} of {n_layers} layers (--keep {k}): {metric} {best['value']:.4f} vs "
        f"{full['value']:.4f} ({change:+.1f} points), {saved:,} parameters saved "
        f"({100 * saved / int(full['params']):.0f}%), {best['seconds_per_batch']:.4f} vs "
        f"{full['seconds_per_batch']:.4f} s/batch"
    )


# ------------------------------------------------------------------------------------------------
# helpers shared with ``tunescope compress``
# ------------------------------------------------------------------------------------------------
def get_task(name: str | None) -> Task | None:
    """The registered task called ``name`` (``None`` stays ``None``)."""
    if name is None:
        return None
    from tunescope.data import get_task as lookup

    return lookup(name)


def task_examples(task: Task, split: str, data_dir: Path | None, limit: int | None) -> Examples:
    """The examples of one split (``limit`` 0 or ``None``: all)."""
    return task.load(split, data_dir=data_dir, limit=limit or None)


def load_tuned(tuned: str, device: Any, command: str) -> Encoder:
    """Load a fine-tuned sequence classifier; refuse a checkpoint without its trained head."""
    from tunescope.surgery import load_trained_classifier

    return load_trained_classifier(tuned, device=device, purpose=command)


def evaluate_pair(
    before: Encoder, after: Encoder, examples: Examples, task: Task, batch_size: int, max_length: int
) -> tuple[float, float]:
    """The task metric of ``before`` and ``after`` on ``examples``."""
    from tunescope.inference import evaluate

    values = []
    for model in (before, after):
        scores = evaluate(
            model, examples, task=task, batch_size=batch_size, max_length=max_length, progress=True
        )
        values.append(scores[task.metric])
    return values[0], values[1]


def before_after(what: str, before: int, after: int) -> str:
    """``parameters: 1,000 -> 800 (-20.0%)``."""
    change = 100 * (after - before) / before if before else 0.0
    return f"{what}: {before:,} -> {after:,} ({change:+.1f}%)"


def metric_line(task: Task, split: str, examples: Examples, before: float, after: float) -> str:
    """``accuracy on movie-sentiment validation (40 examples): 0.5250 -> 0.5000 (-2.5 points)``."""
    return (
        f"{task.metric} on {task.name} {split} ({len(examples)} examples): {before:.4f} -> {after:.4f} "
        f"({100 * (after - before):+.1f} points)"
    )


def register(app: typer.Typer) -> None:
    """Add the ``truncate`` command to ``app``."""
    app.command("truncate")(truncate)
