"""Stage ``truncation``: the fine-tuned model's metric with only its bottom k layers, no retraining.

Phang et al. (2021) found that the top layers of a fine-tuned encoder can often be dropped with little
loss. For k = L..1 the tuned classifier is cut after layer k (pooler and classifier kept; see
:func:`tunescope.surgery.truncate`) and evaluated on the run's analysis split with the task's metric.
The L cuts are computed from one pass of the tuned model per batch, each cut adding only the head on
layer k's output (:func:`truncation_sweep`). Runs when the run has a fine-tuned model with a classifier
head for the task (``--tuned``, or the one the ``finetune`` stage trains). ``tunescope truncate`` runs
the same sweep through :func:`truncation_sweep`.

Writes ``truncation.csv`` (one row per k, each metric with its bootstrap interval over examples and its
difference from the full model with a paired interval) and ``truncation_recommendation.csv``: the fewest
layers whose metric is within ``--truncation.max-loss`` points of the full model's (:func:`recommend`),
one row with that difference and its interval, or none when the full model's metric is undefined. The
report states that row and whether the run agrees with Phang et al.; it computes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunescope.errors import InputError
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table
from tunescope.truncation import COLUMNS, recommend, truncation_sweep

__all__ = ["COLUMNS", "RECOMMENDATION_COLUMNS", "TruncationOptions", "recommend", "truncation_sweep"]

RECOMMENDATION_COLUMNS = (
    "layers_kept",
    "n_layers",
    "metric",
    "value",
    "full_value",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "max_loss",
    "params",
    "full_params",
)


@dataclass(frozen=True)
class TruncationOptions:
    """Options of the ``truncation`` stage."""

    max_loss: float = option(
        1.0,
        help="Points of the metric the recommended cut may lose against the full model.",
        metavar="POINTS",
    )

    def __post_init__(self) -> None:
        if isinstance(self.max_loss, bool) or not self.max_loss >= 0:
            raise InputError(f"--truncation.max-loss must be 0 or more points, got {self.max_loss!r}")


def run(ctx: RunContext) -> list[Table]:
    """One row per number of layers kept, from all L down to 1, and the recommended cut."""
    if not ctx.has_classifier("truncation"):
        return []
    rows = truncation_sweep(
        ctx.classifier(),
        ctx.examples(),
        ctx.task,
        batch_size=ctx.config.batch_size,
        max_length=ctx.config.max_length or 128,
        n_boot=ctx.config.n_boot,
        level=ctx.config.confidence,
        seed=ctx.config.seed,
    )
    max_loss = ctx.config.options_for("truncation").max_loss
    best = recommend(rows, points=max_loss)
    full = max(rows, key=lambda r: int(r["layers_kept"]))
    chosen = []
    if best is not None:
        chosen.append(
            {
                "layers_kept": best["layers_kept"],
                "n_layers": full["layers_kept"],
                "metric": best["metric"],
                "value": best["value"],
                "full_value": full["value"],
                "delta": best["delta"],
                "delta_ci_low": best["delta_ci_low"],
                "delta_ci_high": best["delta_ci_high"],
                "max_loss": max_loss,
                "params": best["params"],
                "full_params": full["params"],
            }
        )
    return [
        Table("truncation", COLUMNS, rows, key=("layers_kept",)),
        Table("truncation_recommendation", RECOMMENDATION_COLUMNS, chosen),
    ]


STAGE = Stage(
    name="truncation",
    title="Dropping top layers without retraining",
    run=run,
    options=TruncationOptions,
    seeded=True,
    description="The fine-tuned model cut after layer k, evaluated as is (Phang et al. 2021).",
    after=("similarity",),
)
