"""Stage ``finetune``: fine-tune the pre-trained model on the task when the run has no ``--tuned`` model.

The model goes to ``RUN/models/tuned`` (a Hugging Face folder; see :func:`tunescope.finetune.finetune`),
and every later stage that needs a fine-tuned model uses it. A second run with the same model, data and
options finds it there and does not retrain; an interrupted run resumes after its last complete epoch.
Writes ``finetune.csv``: one row per epoch with the training loss, the validation metric and the time.
"""

from __future__ import annotations

from tunescope.errors import DataError
from tunescope.pipeline import RunContext, Stage, Table

COLUMNS = (
    "model",
    "epoch",
    "train_loss",
    "metric",
    "value",
    "train_seconds",
    "trainable_params",
    "total_params",
    "kept",
)


def run(ctx: RunContext) -> list[Table]:
    """Fine-tune (or reuse) ``RUN/models/tuned`` and tabulate its training history."""
    if ctx.config.tuned is not None:
        ctx.note(f"finetune: the fine-tuned model was given (--tuned {ctx.config.tuned}); nothing trained.")
        return []
    if not ctx.config.finetune:
        ctx.note("finetune: off (--no-finetune), so this run analyses the pre-trained model alone.")
        return []
    result = ctx.train("tuned")
    rows = [
        {
            "model": ctx.config.labels[1],
            "epoch": record["epoch"],
            "train_loss": record["train_loss"],
            "metric": result.metric,
            "value": record.get(result.metric, float("nan")),
            "train_seconds": record["seconds"],
            "trainable_params": result.trainable_parameters,
            "total_params": result.total_parameters,
            "kept": record["epoch"] == result.best_epoch,
        }
        for record in result.history
    ]
    return [Table("finetune", COLUMNS, rows)]


def check(ctx: RunContext) -> None:
    """A run that fine-tunes needs a training split with at least two classes (checked before training)."""
    config = ctx.config
    if config.tuned is not None or not config.finetune or ctx.task.label_kind == "regression":
        return
    train = ctx.task.load("train", data_dir=config.data_dir, limit=config.train_limit)
    classes = train.present_classes
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class labels"
        raise DataError(
            f"stage finetune: the {len(train)} training example(s) of {config.task} have {found}, and a "
            "classifier needs at least two; raise --train-limit, fix the data's labels, or pass --tuned DIR"
        )


STAGE = Stage(
    check=check,
    name="finetune",
    title="Fine-tuning",
    run=run,
    seeded=True,
    description=(
        "The pre-trained model fine-tuned on the task (all parameters, AdamW with linear warm-up and "
        "decay); the epoch with the best validation metric is kept."
    ),
)
