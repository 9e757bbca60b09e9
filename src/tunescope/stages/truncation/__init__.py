"""Stage ``truncation``: the fine-tuned model's metric with only its bottom k layers, no retraining.

Phang et al. (2021) found that the top layers of a fine-tuned encoder can often be dropped with little
loss. For k = L..1 the tuned classifier is cut after layer k (pooler and classifier kept; see
:func:`tunescope.surgery.truncate`) and evaluated on the run's analysis split with the task's metric.
Runs when the run has a fine-tuned model with a classifier head for the task (``--tuned``, or the one
the ``finetune`` stage trains). ``tunescope truncate`` runs the same sweep through
:func:`truncation_sweep`.
"""

from __future__ import annotations

from tunescope.pipeline import RunContext, Stage, Table
from tunescope.truncation import COLUMNS, recommend, truncation_sweep

__all__ = ["COLUMNS", "recommend", "truncation_sweep"]


def run(ctx: RunContext) -> list[Table]:
    """One row per number of layers kept, from all L down to 1."""
    if not ctx.has_classifier("truncation"):
        return []
    rows = truncation_sweep(
        ctx.classifier(),
        ctx.examples(),
        ctx.task,
        batch_size=ctx.config.batch_size,
        max_length=ctx.config.max_length or 128,
    )
    return [Table("truncation", COLUMNS, rows)]


STAGE = Stage(
    name="truncation",
    title="Dropping top layers without retraining",
    run=run,
    description="The fine-tuned model cut after layer k, evaluated as is (Phang et al. 2021).",
    after=("similarity",),
)
