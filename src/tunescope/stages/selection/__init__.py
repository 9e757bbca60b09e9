"""Stage ``selection``: does tuning the layers variability picks beat tuning the top layers?

Xie et al. (2022) propose to put the classifier on the layer with the lowest hidden-state variability
``l*`` and to tune only the ``m`` layers ending there (the ``variability`` stage chooses them). This stage
tests the choice by fine-tuning the pre-trained model several ways (*arms*), all on the run's training
examples, batch size and seed:

* ``variability``: the model cut after ``l*`` with the head on it, only the chosen layers (and the head)
  trained (``FinetuneConfig(classifier_layer=l*, train_layers=...)``);
* ``top``: the whole model, only its top ``m`` layers (and the head) trained: the usual partial
  fine-tuning baseline with the same budget;
* ``next_best``: only when ``l*`` is the top layer, so that ``variability`` *is* ``top`` and the comparison
  says nothing: the budget placed at the layer of second-lowest variability, as the variability rule
  would place it there (:func:`tunescope.variability.select_layers` without ``l*``);
* ``full``: every parameter trained.

**Recipes.** Partial tuning trains far fewer parameters than full fine-tuning and needs more steps at a
higher rate (Xie et al. train their selected layers longer and faster than the full model; the exact
values of their appendix could not be checked here, so tunescope's defaults are its own and shown in
every row). Two fair ways, chosen by the stage options:

* the **per-arm recipe** (default): ``full`` with the run's ``--lr`` and ``--epochs``; each partial arm
  with ``--selection.partial-lr-factor`` (4) times that rate for ``--selection.partial-epochs-factor`` (2)
  times the epochs. Every arm is trained as the run trains its own model (``RUN/models/tuned``, which
  serves as ``full`` unless ``--tuned`` was given): the same model selection on the validation split
  (best epoch, early stopping with ``--patience``), so no arm gets a choice the others lack.
* a **learning-rate grid** (``--selection.learning-rates 1e-5,5e-5,2e-4``): every arm trains once per rate
  of the same grid, with the epochs of its recipe (the same search budget for all), on the training
  examples less a seeded ``--selection.holdout`` fraction, and keeps the rate that scores best on that
  held-out slice; the analysis split the table reports never chooses anything. ``selection_grid.csv``
  lists every try.

With the grid, the arms save their last epoch (``keep_best=False``): the held-out slice chooses the rate
and must not also choose the epoch. Each arm is evaluated on the run's analysis split
with the task's metric, with a bootstrap interval over examples, and paired differences (same examples,
resampled together) against ``full`` and against ``top``.

Writes ``selection.csv``: strategy, classifier_layer, trained_layers, learning_rate, epochs, recipe,
metric, value, ci_low, ci_high, n_boot, delta, delta_ci_low, delta_ci_high (this arm minus ``full``),
delta_top, delta_top_ci_low, delta_top_ci_high (this arm minus ``top``), trainable_params, total_params,
train_seconds. Needs the ``variability`` stage's tables and a run that may fine-tune (not
``--no-finetune``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.errors import InputError
from tunescope.locations import format_layers, parse_layers
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table, load_table
from tunescope.variability import select_layers

if TYPE_CHECKING:
    from tunescope.finetune import FinetuneResult
    from tunescope.inference import Predictions

COLUMNS = (
    "strategy",
    "classifier_layer",
    "trained_layers",
    "learning_rate",
    "epochs",
    "recipe",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_boot",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "delta_top",
    "delta_top_ci_low",
    "delta_top_ci_high",
    "trainable_params",
    "total_params",
    "train_seconds",
)
GRID_COLUMNS = ("strategy", "learning_rate", "epochs", "metric", "heldout_value", "n_heldout", "chosen")


def _rates(text: str) -> tuple[float, ...]:
    """``--selection.learning-rates``: a comma list of positive numbers, or ``none``."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"--selection.learning-rates takes numbers such as 1e-5,5e-5,2e-4, got {text!r}"
        ) from None


@dataclass(frozen=True)
class SelectionOptions:
    """Options of the ``selection`` stage: how each arm is trained (see the module doc)."""

    partial_lr_factor: float = option(
        4.0, help="Per-arm recipe: the partial arms' learning rate is this times --lr.", metavar="X"
    )
    partial_epochs_factor: int = option(
        2, help="Per-arm recipe: the partial arms train this times --epochs.", metavar="K"
    )
    learning_rates: tuple[float, ...] = option(
        (),
        help=(
            "A learning-rate grid instead of the per-arm recipe: each arm keeps the rate that scores best "
            "on held-out training examples (empty = the recipe)."
        ),
        parse=_rates,
        metavar="LR,LR,...",
    )
    holdout: float = option(
        0.2,
        help="With a grid: the fraction of the training examples held out to choose the rate.",
        metavar="F",
    )

    def __post_init__(self) -> None:
        if not self.partial_lr_factor > 0:
            raise InputError(
                f"--selection.partial-lr-factor must be positive, got {self.partial_lr_factor!r}"
            )
        factor = self.partial_epochs_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise InputError(f"--selection.partial-epochs-factor must be at least 1, got {factor!r}")
        rates = tuple(float(r) for r in self.learning_rates)
        if any(not (math.isfinite(r) and r > 0) for r in rates) or len(set(rates)) != len(rates):
            raise InputError(f"--selection.learning-rates must be distinct positive numbers, got {rates!r}")
        object.__setattr__(self, "learning_rates", rates)
        if not 0 < self.holdout < 1:
            raise InputError(f"--selection.holdout must be a fraction in (0, 1), got {self.holdout!r}")


@dataclass(frozen=True)
class Arm:
    """One way of fine-tuning in the experiment.

    Attributes:
        strategy: the row's name (``variability``, ``top``, ``next_best``, ``full``).
        classifier_layer: where the head goes (None: on the top layer, the model uncut).
        train_layers: the layers tuned (None: every parameter).
    """

    strategy: str
    classifier_layer: int | None
    train_layers: tuple[int, ...] | None

    @property
    def partial(self) -> bool:
        return self.train_layers is not None

    def changes(self) -> dict[str, Any]:
        """The arm's :class:`~tunescope.finetune.FinetuneConfig` fields that say what trains."""
        out: dict[str, Any] = {}
        if self.classifier_layer is not None:
            out["classifier_layer"] = self.classifier_layer
        if self.train_layers is not None:
            out["train_layers"] = self.train_layers
        return out


def arms(
    l_star: int, adapt: tuple[int, ...], budget: int, n_layers: int, curve: dict[int, float]
) -> tuple[list[Arm], str | None]:
    """The arms of the experiment, and a note when the variability choice is the top-m baseline itself.

    Args:
        l_star, adapt: the variability stage's choice (classifier layer, tuned layers).
        budget: ``m``.
        n_layers: ``L``.
        curve: layer -> the pre-trained model's variability (for the next-best placement).
    """
    top = tuple(range(max(1, n_layers - budget + 1), n_layers + 1))
    same = l_star == n_layers and adapt == top
    out = [Arm("variability", None if same else l_star, top if same else adapt), Arm("top", None, top)]
    note = None
    if same:
        rest = {layer: v for layer, v in curve.items() if layer != l_star and math.isfinite(v)}
        runner = select_layers(rest, budget) if any(layer >= 1 for layer in rest) else None
        note = (
            f"selection: the lowest-variability layer is the top layer ({n_layers}), so the variability "
            f"choice is the top {len(top)} layer(s) itself (trained once)"
        )
        if runner is not None:
            out.append(Arm("next_best", runner.classifier_layer, runner.adapt_layers))
            note += (
                f"; the experiment also places the budget at layer {runner.classifier_layer}, the "
                "next-lowest variability, so the comparison says something."
            )
        else:
            note += "; no other layer has a defined variability, so there is no next-best placement."
    out.append(Arm("full", None, None))
    return out, note


def _recipe(ctx: RunContext, arm: Arm, options: SelectionOptions) -> tuple[float, int]:
    """(learning rate, epochs) of the per-arm recipe."""
    if not arm.partial:
        return ctx.config.learning_rate, ctx.config.epochs
    return (
        ctx.config.learning_rate * options.partial_lr_factor,
        ctx.config.epochs * options.partial_epochs_factor,
    )


def _folder(arm: Arm, top: Arm, lr: float, epochs: int, suffix: str = "") -> str:
    """``RUN/models`` folder name: one per arm and recipe (an arm equal to ``top`` shares its folder)."""
    same = (arm.classifier_layer, arm.train_layers) == (top.classifier_layer, top.train_layers)
    return f"select-{top.strategy if same else arm.strategy}-lr{lr:g}-ep{epochs}{suffix}"


@dataclass(frozen=True)
class Trained:
    """An arm's model and how it was trained."""

    result: FinetuneResult
    learning_rate: float
    epochs: int
    recipe: str


def _finetune(ctx: RunContext, name: str, arm: Arm, lr: float, epochs: int, **data: Any) -> FinetuneResult:
    """Train ``arm`` at ``lr`` for ``epochs`` on the grid's own ``train``/``validation`` examples, keeping
    the last epoch (the held-out slice chooses the rate, so it must not choose the epoch too).

    ``ctx.train`` trains on the run's data, so the grid goes through :func:`tunescope.finetune.finetune`
    with the run's other settings; the folder gets the seed's suffix like ``ctx.train``'s.
    """
    from dataclasses import replace

    from tunescope.finetune import finetune

    config = replace(ctx.finetune_config(**arm.changes()), learning_rate=lr, epochs=epochs, keep_best=False)
    return finetune(
        ctx.config.model,
        ctx.task,
        ctx.models_dir / f"{name}{ctx.training.suffix}",
        config=config,
        data_dir=ctx.config.data_dir,
        device=ctx.device,
        progress=ctx.progress,
        **data,
    )


def _train_by_recipe(
    ctx: RunContext, arm: Arm, top: Arm, options: SelectionOptions, done: dict[str, Trained]
) -> Trained:
    lr, epochs = _recipe(ctx, arm, options)
    if not arm.partial:
        return Trained(ctx.experiment_full(), lr, epochs, "per-arm recipe (the experiments' full arm)")
    name = _folder(arm, top, lr, epochs)
    if name not in done:
        result = ctx.train(name, experiment=True, learning_rate=lr, epochs=epochs, **arm.changes())
        done[name] = Trained(result, lr, epochs, "per-arm recipe")
    return done[name]


def _train_by_grid(
    ctx: RunContext, arm: Arm, top: Arm, options: SelectionOptions, grid_rows: list[dict[str, Any]]
) -> Trained:
    _, epochs = _recipe(ctx, arm, options)
    fit, held_out = _holdout_split(ctx, options.holdout)
    tried: list[tuple[float, FinetuneResult]] = []
    for lr in options.learning_rates:
        name = _folder(arm, top, lr, epochs, "-grid")
        tried.append((lr, _finetune(ctx, name, arm, lr, epochs, train=fit, validation=held_out)))
    best_lr, best = max(tried, key=lambda pair: (pair[1].best_value, -pair[0]))
    for lr, result in tried:
        grid_rows.append(
            {
                "strategy": arm.strategy,
                "learning_rate": lr,
                "epochs": epochs,
                "metric": result.metric,
                "heldout_value": result.best_value,
                "n_heldout": len(held_out),
                "chosen": lr == best_lr,
            }
        )
    grid = ",".join(f"{lr:g}" for lr in options.learning_rates)
    return Trained(best, best_lr, epochs, f"best of {grid} on {len(held_out)} held-out training examples")


def _holdout_split(ctx: RunContext, fraction: float) -> tuple[Any, Any]:
    """The run's training examples split by the run's seed into (fit, held-out)."""
    train = ctx.examples("train", limit=ctx.training.experiment_limit())
    n_held = max(2, round(fraction * len(train)))
    if len(train) - n_held < 2:
        raise InputError(
            f"selection: {len(train)} training example(s) cannot spare {n_held} for choosing the learning "
            "rate; raise --train-limit or lower --selection.holdout"
        )
    order = np.random.default_rng(ctx.config.seed).permutation(len(train))
    return train.subset(np.sort(order[n_held:])), train.subset(np.sort(order[:n_held]))


def run(ctx: RunContext) -> list[Table]:
    """Fine-tune every arm (or reuse its folder), evaluate each with intervals and paired differences."""
    if not ctx.config.finetune:
        ctx.note("selection: the run may not fine-tune (--no-finetune), so the experiment is skipped.")
        return []
    chosen = load_table(ctx.root, "layer_selection")
    if not chosen:
        ctx.note("selection: the variability stage chose no layers (see its notes), so nothing to compare.")
        return []
    base = ctx.config.labels[0]
    curve = {
        int(row["layer"]): float(row["variability"])
        for row in load_table(ctx.root, "variability")
        if row["model"] == base
    }
    budget = ctx.config.options_for("variability").budget
    options = ctx.config.options_for("selection")
    n_layers = ctx.encoder().num_layers
    adapt = parse_layers(chosen[0]["adapt_layers"], option="layer_selection.csv") or ()
    plan, note = arms(int(chosen[0]["classifier_layer"]), adapt, budget, n_layers, curve)
    if note:
        ctx.note(note)
    top = next(arm for arm in plan if arm.strategy == "top")
    grid_rows: list[dict[str, Any]] = []
    trained: dict[str, Trained] = {}
    done: dict[str, Trained] = {}  # by folder: an arm equal to top is trained once
    for arm in plan:
        if options.learning_rates:
            trained[arm.strategy] = _train_by_grid(ctx, arm, top, options, grid_rows)
        else:
            trained[arm.strategy] = _train_by_recipe(ctx, arm, top, options, done)
    found = {strategy: _predictions(ctx, arm.result) for strategy, arm in trained.items()}
    rows = [_row(ctx, arm, trained[arm.strategy], found) for arm in plan]
    tables = [Table("selection", COLUMNS, rows, key=("strategy",))]
    if grid_rows:
        tables.append(Table("selection_grid", GRID_COLUMNS, grid_rows))
    return tables


def _predictions(ctx: RunContext, result: FinetuneResult) -> Predictions:
    from tunescope.inference import predictions
    from tunescope.models import load_classifier

    model = load_classifier(str(result.path), device=str(ctx.device))
    return predictions(
        model, ctx.examples(), batch_size=ctx.config.batch_size, max_length=ctx.config.max_length or 128
    )


def _row(ctx: RunContext, arm: Arm, trained: Trained, found: dict[str, Predictions]) -> dict[str, Any]:
    metric = ctx.task.metric
    bootstrap: dict[str, Any] = {
        "n_boot": ctx.config.n_boot,
        "level": ctx.config.confidence,
        "seed": ctx.config.seed,
    }
    mine = found[arm.strategy]
    score = mine.interval(metric, **bootstrap)
    versus_full = found["full"].difference(mine, metric, **bootstrap)
    versus_top = found["top"].difference(mine, metric, **bootstrap)
    n_layers = ctx.encoder().num_layers
    return {
        "strategy": arm.strategy,
        "classifier_layer": arm.classifier_layer or n_layers,
        "trained_layers": "all" if arm.train_layers is None else format_layers(arm.train_layers),
        "learning_rate": trained.learning_rate,
        "epochs": trained.epochs,
        "recipe": trained.recipe,
        "metric": metric,
        "value": score.value,
        **score.columns(),
        "delta": versus_full.value,
        "delta_ci_low": versus_full.low,
        "delta_ci_high": versus_full.high,
        "delta_top": versus_top.value,
        "delta_top_ci_low": versus_top.low,
        "delta_top_ci_high": versus_top.high,
        "trainable_params": trained.result.trainable_parameters,
        "total_params": trained.result.total_parameters,
        "train_seconds": trained.result.train_seconds,
    }


STAGE = Stage(
    name="selection",
    seeded=True,
    title="Tuning the layers variability selects",
    run=run,
    options=SelectionOptions,
    needs=("variability",),
    description=(
        "Classifier on the lowest-variability layer with only the layers below it tuned, against "
        "tuning the top layers with the same budget and full fine-tuning (Xie et al. 2022), each arm "
        "with its own recipe."
    ),
)
