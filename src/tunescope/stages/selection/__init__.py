"""Stage ``selection``: does tuning the layers variability picks beat tuning the top layers?

Xie et al. (2022) propose to put the classifier on the layer with the lowest hidden-state variability
``l*`` and to tune only the ``m`` layers ending there (the ``variability`` stage chooses them). This stage
tests the choice with three fine-tunings of the pre-trained model, all with the run's epochs, learning
rate, batch size, training examples and seed:

* ``variability``: the model cut after ``l*`` with the head on it, only the chosen layers (and the head)
  trained (``FinetuneConfig(classifier_layer=l*, train_layers=...)``);
* ``top``: the whole model, only its top ``m`` layers (and the head) trained: the usual partial
  fine-tuning baseline with the same budget;
* ``full``: every parameter trained: the run's own fine-tuned model (``RUN/models/tuned``) when the run
  fine-tuned it, else one trained here (``RUN/models/full``), so a ``--tuned`` model trained with other
  settings never stands in for it.

Each is evaluated on the run's analysis split with the task's metric. Writes ``selection.csv``: strategy,
classifier_layer, trained_layers, metric, value, trainable_params, total_params, train_seconds. Needs
the ``variability`` stage's ``layer_selection.csv`` and a run that may fine-tune (not ``--no-finetune``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunescope.locations import format_layers, parse_layers
from tunescope.pipeline import RunContext, Stage, Table, load_table

if TYPE_CHECKING:
    from tunescope.finetune import FinetuneResult

COLUMNS = (
    "strategy",
    "classifier_layer",
    "trained_layers",
    "metric",
    "value",
    "trainable_params",
    "total_params",
    "train_seconds",
)


def _parse_layers(text: str) -> tuple[int, ...]:
    return parse_layers(text, option="layer_selection.csv") or ()


def run(ctx: RunContext) -> list[Table]:
    """Fine-tune the three strategies (or reuse their folders) and evaluate each."""
    if not ctx.config.finetune:
        ctx.note("selection: the run may not fine-tune (--no-finetune), so the experiment is skipped.")
        return []
    chosen = load_table(ctx.root, "layer_selection")
    if not chosen:
        ctx.note("selection: the variability stage chose no layers (see its notes), so nothing to compare.")
        return []
    l_star = int(chosen[0]["classifier_layer"])
    adapt = _parse_layers(chosen[0]["adapt_layers"])
    budget = ctx.config.options_for("variability").budget
    n_layers = ctx.encoder().num_layers
    top = tuple(range(max(1, n_layers - budget + 1), n_layers + 1))
    if l_star == n_layers and adapt == top:
        # the variability choice is the top m layers: one training run serves both rows
        ctx.note(
            f"selection: variability chose the top {len(adapt)} layer(s) with the classifier on the last "
            "layer, the same model as the 'top' strategy, so it is trained once."
        )
        by_variability = ctx.train("select-top", train_layers=top)
    else:
        by_variability = ctx.train("select-variability", classifier_layer=l_star, train_layers=adapt)
    runs: list[tuple[str, int, str, FinetuneResult]] = [
        (
            "variability",
            l_star,
            format_layers(adapt),
            by_variability,
        ),
        ("top", n_layers, format_layers(top), ctx.train("select-top", train_layers=top)),
        ("full", n_layers, "all", ctx.train("tuned" if ctx.config.tuned is None else "full")),
    ]
    from tunescope.inference import evaluate
    from tunescope.models import load_classifier

    task = ctx.task
    rows = []
    for strategy, classifier_layer, trained, result in runs:
        model = load_classifier(str(result.path), device=str(ctx.device))
        scores = evaluate(
            model,
            ctx.examples(),
            task=task,
            batch_size=ctx.config.batch_size,
            max_length=ctx.config.max_length or 128,
        )
        rows.append(
            {
                "strategy": strategy,
                "classifier_layer": classifier_layer,
                "trained_layers": trained,
                "metric": task.metric,
                "value": scores[task.metric],
                "trainable_params": result.trainable_parameters,
                "total_params": result.total_parameters,
                "train_seconds": result.train_seconds,
            }
        )
    return [Table("selection", COLUMNS, rows)]


STAGE = Stage(
    name="selection",
    title="Tuning the layers variability selects",
    run=run,
    needs=("variability",),
    description=(
        "Classifier on the lowest-variability layer with only the layers below it tuned, against "
        "tuning the top layers with the same budget and full fine-tuning (Xie et al. 2022)."
    ),
)
