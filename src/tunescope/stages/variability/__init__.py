"""Stage ``variability``: each layer's hidden-state variability, and the layers it says to tune.

Xie et al. (2022) measure how well a layer separates a task's classes by the ratio of within-class to
between-class variability of its pooled hidden states, ``nu = Tr(Sigma_W Sigma_B^+) / C`` (class-balanced;
see :mod:`tunescope.variability`). The stage computes it for every layer of the pre-trained model, and of
the fine-tuned one when the run has it, on the run's analysis split, and applies their selection rule to
the pre-trained curve (:func:`tunescope.variability.select_layers` with ``--variability.budget``):
the classifier goes on the most specialised layer ``l*``, the ``budget`` layers ending at ``l*`` are tuned
and the layers above it are dropped. The ``selection`` stage tests that choice by fine-tuning.

Writes ``variability.csv`` (model, layer, variability, selected: ``classifier`` / ``adapt`` / ``dropped``
on the pre-trained model's rows, empty elsewhere) and ``layer_selection.csv`` (one row: budget,
classifier_layer, adapt_layers, dropped_layers, reason). A layer whose class means coincide (zero
between-class scatter) gets NaN and a note; a regression task or a single class leaves no tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from tunescope.errors import DataError, InputError, MeasureError
from tunescope.locations import format_layers
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table
from tunescope.variability import LayerSelection, layer_variability, select_layers

COLUMNS = ("model", "layer", "variability", "selected")
SELECTION_COLUMNS = ("budget", "classifier_layer", "adapt_layers", "dropped_layers", "reason")


def layer_values(reps: Mapping[int, Tensor], labels: np.ndarray) -> tuple[dict[int, float], list[int]]:
    """Every layer's variability; layers with zero between-class scatter get NaN.

    Returns:
        (layer -> variability, the degenerate layers).
    """
    try:
        return layer_variability(reps, labels), []
    except MeasureError:
        pass
    values: dict[int, float] = {}
    degenerate: list[int] = []
    for layer in sorted(reps):
        try:
            values[layer] = layer_variability({layer: reps[layer]}, labels)[layer]
        except MeasureError:
            values[layer] = math.nan
            degenerate.append(layer)
    return values, degenerate


def selection_marks(selection: LayerSelection) -> dict[int, str]:
    """Layer -> ``classifier`` (l*, also tuned), ``adapt`` or ``dropped``; frozen layers are absent."""
    marks = {layer: "adapt" for layer in selection.adapt_layers}
    marks.update({layer: "dropped" for layer in selection.dropped_layers})
    marks[selection.classifier_layer] = "classifier"
    return marks


@dataclass(frozen=True)
class VariabilityOptions:
    """Options of the ``variability`` stage (the ``selection`` stage tunes the layers it picks)."""

    budget: int = option(
        2,
        help="m: how many layers the selection rule tunes (ending at the most specialised layer).",
        metavar="M",
        aliases=("--budget",),
    )

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise InputError(f"--variability.budget must be at least 1 layer, got {self.budget!r}")


def run(ctx: RunContext) -> list[Table]:
    """Variability of every layer of each model, and the pre-trained model's layer selection."""
    task = ctx.task
    if task.label_kind == "regression":
        ctx.note(
            f"variability: {task.name} is a regression task; the variability ratio needs classes, so it "
            "is not computed."
        )
        return []
    labels = ctx.examples().labels
    if labels is None:  # check() refuses unlabelled examples; a direct call gets nothing
        return []
    base = ctx.config.labels[0]
    curves: dict[str, dict[int, float]] = {}
    for model in ctx.model_names():
        reps = ctx.representations(model)
        curves[model], degenerate = layer_values(reps, labels)
        if degenerate:
            ctx.note(
                f"variability: {model} model, layer(s) {', '.join(map(str, degenerate))} have identical "
                "class means (zero between-class scatter), so their variability is undefined (NaN)."
            )
    finite = {layer: v for layer, v in curves[base].items() if math.isfinite(v)}
    budget = ctx.config.options_for("variability").budget
    selection = select_layers(finite, budget) if finite else None
    if selection is None:
        ctx.note("variability: no layer of the base model has a defined variability; no layer selection.")
    marks = selection_marks(selection) if selection is not None else {}
    rows = [
        {
            "model": model,
            "layer": layer,
            "variability": value,
            "selected": marks.get(layer, "") if model == base else "",
        }
        for model, curve in curves.items()
        for layer, value in sorted(curve.items())
    ]
    tables = [Table("variability", COLUMNS, rows)]
    if selection is not None:
        tables.append(
            Table(
                "layer_selection",
                SELECTION_COLUMNS,
                [
                    {
                        "budget": budget,
                        "classifier_layer": selection.classifier_layer,
                        "adapt_layers": format_layers(selection.adapt_layers),
                        "dropped_layers": format_layers(selection.dropped_layers),
                        "reason": selection.reason,
                    }
                ],
            )
        )
    return tables


def check(ctx: RunContext) -> None:
    """The analysis examples must hold at least two classes (the ratio compares classes)."""
    if ctx.task.label_kind == "regression":
        return
    examples = ctx.examples()
    classes = examples.present_classes
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class labels"
        raise DataError(
            f"stage variability: the {len(examples)} {ctx.config.split} example(s) of "
            f"{ctx.config.task} have {found}, and the variability ratio needs at least two classes; "
            "raise --limit, pick another --split, or leave variability out of --stages"
        )


STAGE = Stage(
    check=check,
    options=VariabilityOptions,
    name="variability",
    title="Hidden-state variability",
    run=run,
    description=(
        "Within- over between-class variability of each layer's pooled states, Tr(Σ_W Σ_B⁺)/C, "
        "classes weighted equally (Xie et al. 2022); lower = classes better separated."
    ),
    after=("probes",),
)
