"""``tunescope truncate``: the metric as top layers are dropped (no retraining), or export a cut model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunescope.cli import _options as opt

if TYPE_CHECKING:
    from tunescope.data import Examples, Task
    from tunescope.models import Encoder


def truncate(
    tuned: opt.Tuned,
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
    max_length: opt.MaxLength = 128,
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
    task_obj = opt.get_task(task)
    if keep is None and task_obj is None:
        raise InputError("the truncation sweep needs --task T to evaluate on (or pass --keep K to export)")
    torch_device = resolve_device(device)
    model = opt.load_tuned(tuned, torch_device, "tunescope truncate")
    if keep is not None and keep > model.num_layers:
        raise InputError(f"--keep {keep} is more layers than {tuned} has; choose K in 1..{model.num_layers}")
    examples = None if task_obj is None else opt.task_examples(task_obj, split, data_dir, limit)
    if keep is None:
        if task_obj is not None and examples is not None:  # checked above; narrows the types
            _sweep(model, examples, task_obj, folder, batch_size=batch_size, max_length=max_length)
        return

    from tunescope.surgery import count_parameters, export
    from tunescope.surgery import truncate as cut
    from tunescope.truncation import evaluate_pair

    small = cut(model, keep)
    metric = None
    if task_obj is not None and examples is not None:
        values = evaluate_pair(
            model, small, examples, task_obj, batch_size=batch_size, max_length=max_length, progress=True
        )
        metric = opt.metric_line(task_obj, split, examples, *values)
    export(small, folder)
    typer.echo(f"layers: {model.num_layers} -> {keep}")
    typer.echo(opt.before_after("parameters", count_parameters(model), count_parameters(small)))
    if metric is not None:
        typer.echo(metric)
    typer.echo(f"model saved to {folder} (loads with AutoModelForSequenceClassification.from_pretrained)")


def _sweep(
    model: Encoder, examples: Examples, task: Task, folder: Path, *, batch_size: int, max_length: int
) -> None:
    from tunescope._io import write_csv
    from tunescope.truncation import COLUMNS, recommend, truncation_sweep

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


def register(app: typer.Typer) -> None:
    """Add the ``truncate`` command to ``app``."""
    app.command("truncate")(truncate)
