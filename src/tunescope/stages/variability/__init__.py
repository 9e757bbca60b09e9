"""Stage ``variability``: each layer's hidden-state variability, and the layers it says to tune.

Xie et al. (2022) measure how well a layer separates a task's classes by the ratio of within-class to
between-class variability of its pooled hidden states, ``nu = Tr(Sigma_W Sigma_B^+) / C`` (class-balanced;
see :mod:`tunescope.variability`). As in the paper, the stage computes it on **training** data: a subset of
``--variability.limit`` examples of the task's ``train`` split drawn with the run's seed (0 = the whole
split), never the analysis split the ``selection`` experiment is scored on; the run's ``--split`` and
``--limit`` do not apply here. Each text is pooled by ``--variability.pooling``, by default
``mean_no_special`` (the mean of its token states other than [CLS]/[SEP], the paper's pooling; ``mean``
with the special tokens and ``cls`` remain selectable). It does so for every layer of the pre-trained
model, and of the fine-tuned one when the run has it, and applies their selection rule to the
pre-trained curve (:func:`tunescope.variability.select_layers` with ``--variability.budget``): the
classifier goes on the most specialised layer ``l*``, the ``budget`` layers ending at ``l*`` are tuned and
the layers above it are dropped. The ``selection`` stage tests that choice by fine-tuning.

Writes ``variability.csv`` (model, layer, split, variability, selected: ``classifier`` / ``adapt`` /
``dropped`` on the pre-trained model's rows, empty elsewhere) and ``layer_selection.csv`` (one row:
budget, split, n_examples, pooling, classifier_layer, adapt_layers, dropped_layers, reason). A layer whose
class means coincide (zero between-class scatter) gets NaN and a note; a regression task leaves no
tables. Too few training examples (a single class, or a class with fewer than :data:`MIN_PER_CLASS`) is
refused by :func:`check` before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from tunescope.errors import DataError, InputError, MeasureError
from tunescope.locations import format_layers
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table
from tunescope.variability import LayerSelection, layer_variability, select_layers

if TYPE_CHECKING:
    from tunescope.data import Examples

COLUMNS = ("model", "layer", "split", "variability", "selected")
SELECTION_COLUMNS = (
    "budget",
    "split",
    "n_examples",
    "pooling",
    "classifier_layer",
    "adapt_layers",
    "dropped_layers",
    "reason",
)
#: the split the variability is computed on (Xie et al. use training data)
SPLIT = "train"
#: fewest training examples a class needs: with one, its within-class scatter is zero by construction
MIN_PER_CLASS = 2


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


def _limit(text: str) -> int | None:
    """``--variability.limit``: a whole number; 0 or ``none`` = the whole training split."""
    if text.strip().lower() in ("0", "none", "all", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--variability.limit takes a whole number (0 = all), got {text!r}") from None


@dataclass(frozen=True)
class VariabilityOptions:
    """Options of the ``variability`` stage (the ``selection`` stage tunes the layers it picks)."""

    budget: int = option(
        2,
        help="m: how many layers the selection rule tunes (ending at the most specialised layer).",
        metavar="M",
        aliases=("--budget",),
    )
    limit: int | None = option(
        2000,
        help="Training examples the variability is computed on, drawn with the run's seed (0 = all).",
        parse=_limit,
        metavar="N",
    )
    pooling: str = option(
        "mean_no_special",
        help=(
            "Sentence vector per text: mean_no_special (mean of the non-padding tokens other than "
            "[CLS]/[SEP], as Xie et al.), mean (special tokens included) or cls (first token)."
        ),
        metavar="POOLING",
    )

    def __post_init__(self) -> None:
        from tunescope.errors import UnknownNameError
        from tunescope.extract import SENTENCE_POOLINGS

        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise InputError(f"--variability.budget must be at least 1 layer, got {self.budget!r}")
        if self.limit == 0:
            object.__setattr__(self, "limit", None)
        elif self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 2
        ):
            raise InputError(
                f"--variability.limit must be at least 2 examples or 0 (all), got {self.limit!r}"
            )
        if self.pooling not in SENTENCE_POOLINGS:
            raise UnknownNameError(
                "sentence pooling", str(self.pooling), SENTENCE_POOLINGS, hint="fix --variability.pooling"
            )


def training_examples(ctx: RunContext) -> Examples:
    """The training examples the variability is computed on (``--variability.limit``, the run's seed)."""
    options = ctx.config.options_for("variability")
    return ctx.examples(SPLIT, limit=options.limit, seed=ctx.config.seed)


def run(ctx: RunContext) -> list[Table]:
    """Variability of every layer of each model, and the pre-trained model's layer selection."""
    task = ctx.task
    if task.label_kind == "regression":
        ctx.note(
            f"variability: {task.name} is a regression task; the variability ratio needs classes, so it "
            "is not computed."
        )
        return []
    options = ctx.config.options_for("variability")
    examples = training_examples(ctx)
    labels = examples.labels
    if labels is None:  # check() refuses unlabelled examples; a direct call gets nothing
        return []
    base = ctx.config.labels[0]
    curves: dict[str, dict[int, float]] = {}
    for model in ctx.model_names():
        reps = ctx.representations(model, SPLIT, options.pooling, limit=options.limit, seed=ctx.config.seed)
        curves[model], degenerate = layer_values(reps, labels)
        if degenerate:
            ctx.note(
                f"variability: {model} model, layer(s) {', '.join(map(str, degenerate))} have identical "
                "class means (zero between-class scatter), so their variability is undefined (NaN)."
            )
    finite = {layer: v for layer, v in curves[base].items() if math.isfinite(v)}
    budget = options.budget
    selection = select_layers(finite, budget) if finite else None
    if selection is None:
        ctx.note("variability: no layer of the base model has a defined variability; no layer selection.")
    marks = selection_marks(selection) if selection is not None else {}
    rows = [
        {
            "model": model,
            "layer": layer,
            "split": SPLIT,
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
                        "split": SPLIT,
                        "n_examples": len(examples),
                        "pooling": options.pooling,
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
    """The training examples must hold two classes or more, each with at least :data:`MIN_PER_CLASS`."""
    task = ctx.task
    if task.label_kind == "regression":
        return
    if SPLIT not in task.splits:
        raise InputError(
            f"stage variability computes on the {SPLIT} split, and {ctx.config.task} has only "
            f"{', '.join(task.splits) or 'no splits'}; leave variability out of --stages"
        )
    examples = training_examples(ctx)
    limit = ctx.config.options_for("variability").limit
    capped = limit is not None and len(examples) == limit
    fix = "raise --variability.limit (0 = the whole split)" if capped else "use more training data"
    classes = examples.present_classes
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class labels"
        raise DataError(
            f"stage variability: the {len(examples)} {SPLIT} example(s) of {ctx.config.task} have {found}, "
            f"and the variability ratio needs at least two classes; {fix}, or leave variability out of "
            "--stages"
        )
    counts = examples.class_counts or {}
    few = {name: n for name, n in counts.items() if 0 < n < MIN_PER_CLASS}
    if few:
        listed = ", ".join(f"{name!r} has {n}" for name, n in few.items())
        raise InputError(
            f"stage variability: among the {len(examples)} {SPLIT} example(s) of {ctx.config.task}, "
            f"{listed}; the variability ratio needs at least {MIN_PER_CLASS} examples of every class "
            f"(one example has no within-class spread); {fix}, or leave variability out of --stages"
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
