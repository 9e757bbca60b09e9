"""Stage ``truncation``: the fine-tuned model's metric with only its bottom k layers, no retraining.

Phang et al. (2021) found that the top layers of a fine-tuned encoder can often be dropped with little
loss. For k = L..1 the tuned classifier is cut after layer k (pooler and classifier kept; see
:func:`tunescope.surgery.truncate`) and evaluated on the run's analysis split with the task's metric.
Runs when the run has a fine-tuned model with a classifier head for the task (``--tuned``, or the one
the ``finetune`` stage trains).
"""

from __future__ import annotations

import time

from tunescope.pipeline import RunContext, Stage, Table, register_stage

COLUMNS = ("layers_kept", "metric", "value", "params", "seconds_per_batch")


def run(ctx: RunContext) -> list[Table]:
    """One row per number of layers kept, from all L down to 1."""
    if not ctx.has_tuned():
        ctx.note("truncation: no fine-tuned model in this run (pass --tuned DIR), so no truncation curve.")
        return []
    from tunescope.metrics import evaluate
    from tunescope.surgery import count_parameters, truncate

    task = ctx.task
    tuned = ctx.classifier()
    examples = ctx.examples()
    batch_size = ctx.config.batch_size
    n_batches = max(1, -(-len(examples) // batch_size))
    rows = []
    for keep in range(tuned.num_layers, 0, -1):
        model = truncate(tuned, keep)
        start = time.perf_counter()
        scores = evaluate(
            model, examples, task=task, batch_size=batch_size, max_length=ctx.config.max_length or 128
        )
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "layers_kept": keep,
                "metric": task.metric,
                "value": scores[task.metric],
                "params": count_parameters(model),
                "seconds_per_batch": elapsed / n_batches,
            }
        )
    return [Table("truncation", COLUMNS, rows)]


register_stage(
    Stage(
        name="truncation",
        title="Dropping top layers without retraining",
        run=run,
        description="The fine-tuned model cut after layer k, evaluated as is (Phang et al. 2021).",
    )
)
