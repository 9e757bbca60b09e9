"""Stage ``layers``: descriptive statistics of every layer of every model in the run."""

from __future__ import annotations

from tunescope.layerstats import STATISTICS, layer_statistics
from tunescope.pipeline import RunContext, Stage, Table

COLUMNS = ("model", "layer", "split", "statistic", "value")


def run(ctx: RunContext) -> list[Table]:
    """One row per (model, layer, statistic) on the run's analysis split."""
    rows = []
    for model in ctx.model_names():
        reps = ctx.representations(model)
        for layer in reps.layers:
            stats = layer_statistics(reps[layer])
            rows += [
                {
                    "model": model,
                    "layer": layer,
                    "split": ctx.config.split,
                    "statistic": name,
                    "value": stats[name],
                }
                for name in STATISTICS
            ]
    return [Table("layer_stats", COLUMNS, rows)]


STAGE = Stage(
    pooled=True,
    name="layers",
    title="Layers at a glance",
    run=run,
    description="Size, anisotropy and dimensionality of each layer's representations.",
    after=("finetune",),
)
