"""Stage ``similarity``: layer-by-layer CKA inside each model and between the models, with blocks."""

from __future__ import annotations

from tunescope.pipeline import RunContext, Stage, Table, register_stage

CKA_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "measure", "split", "value")
BLOCK_COLUMNS = ("model", "measure", "block", "first_layer", "last_layer", "score")
MEASURE = "linear_cka"


def run(ctx: RunContext) -> list[Table]:
    """Within-model linear CKA matrices (and base-vs-tuned when a tuned model is given), with blocks."""
    from tunescope.similarity import cka_matrix, find_blocks

    split = ctx.config.split
    models = ctx.model_names()
    pairs = [(m, m) for m in models] + ([("base", "tuned")] if "tuned" in models else [])
    rows, block_rows = [], []
    for model_a, model_b in pairs:
        reps_a, reps_b = ctx.representations(model_a), ctx.representations(model_b)
        matrix = cka_matrix(reps_a, None if model_a == model_b else reps_b, measure=MEASURE)
        for i, layer_a in enumerate(reps_a.layers):
            for j, layer_b in enumerate(reps_b.layers):
                rows.append(
                    {
                        "model_a": model_a,
                        "layer_a": layer_a,
                        "model_b": model_b,
                        "layer_b": layer_b,
                        "measure": MEASURE,
                        "split": split,
                        "value": float(matrix[i, j]),
                    }
                )
        if model_a == model_b:
            found = find_blocks(matrix)
            for number, (first, last) in enumerate(found.blocks):
                block_rows.append(
                    {
                        "model": model_a,
                        "measure": MEASURE,
                        "block": number,
                        "first_layer": reps_a.layers[first],
                        "last_layer": reps_a.layers[last],
                        "score": found.score,
                    }
                )
    return [Table("cka", CKA_COLUMNS, rows), Table("blocks", BLOCK_COLUMNS, block_rows)]


register_stage(
    Stage(
        name="similarity",
        title="Layer similarity (CKA)",
        run=run,
        description="Linear CKA between every pair of layers (Kornblith et al. 2019), and contiguous blocks.",
    )
)
