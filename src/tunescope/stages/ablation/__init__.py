"""Stage ``ablation``: which layers did fine-tuning change in a way that matters for the task?

Merchant et al. (2020, "What happens to BERT embeddings during fine-tuning?") undo fine-tuning layer by
layer: put a layer back to its pre-trained weights and see how much of the task is lost. Here the
fine-tuned classifier is evaluated on the run's analysis split, with the task's metric:

* ``none``: as it is (the reference every ``delta`` is taken from);
* ``restore`` of layer ``l``: that layer's weights back to the pre-trained ones
  (:func:`tunescope.surgery.restore_layers`); a small loss says its fine-tuning change hardly matters;
* ``reinit`` of layer ``l``: that layer re-drawn from the family's random init
  (:func:`tunescope.surgery.reinit_layers`, seeded with the run's seed); a large loss says the task
  depends on that layer's weights at all;
* ``restore_top`` of layers ``k..L`` for ``k = L..1``: the top of the model back to pre-trained weights,
  cumulatively (how much of the fine-tuning the task needs above layer ``k - 1``).

Embeddings, pooler and classifier head always stay fine-tuned. Every ablated model is a copy; the tuned
and pre-trained models are never modified. ALBERT shares one layer across positions, so only all layers
at once can be restored or re-initialised there. Writes ``ablation.csv``: ``ablation, layers, metric,
value, delta`` (``layers`` is ``"3"`` or ``"4-6"``, empty for ``none``; ``delta = value - value(none)``).
"""

from __future__ import annotations

from tunescope.locations import format_layers
from tunescope.pipeline import RunContext, Stage, Table

__all__ = ["COLUMNS", "ablations"]

COLUMNS = ("ablation", "layers", "metric", "value", "delta")


def ablations(n_layers: int, *, shared: bool = False) -> list[tuple[str, list[int]]]:
    """The (ablation, layers) pairs the stage evaluates, in table order.

    Args:
        n_layers: ``L``.
        shared: the family shares one layer module across positions (ALBERT): only all layers at once.

    Example:
        >>> [f"{a}:{format_layers(ls)}" for a, ls in ablations(2)]
        ['none:', 'restore:1', 'restore:2', 'reinit:1', 'reinit:2', 'restore_top:2', 'restore_top:1,2']
    """
    every = list(range(1, n_layers + 1))
    if shared:
        return [("none", []), ("restore", every), ("reinit", every)]
    return [
        ("none", []),
        *[("restore", [layer]) for layer in every],
        *[("reinit", [layer]) for layer in every],
        *[("restore_top", list(range(k, n_layers + 1))) for k in range(n_layers, 0, -1)],
    ]


def run(ctx: RunContext) -> list[Table]:
    """One row per ablation: the tuned model as is, each layer restored / re-initialised, the top restored."""
    if not ctx.has_classifier("ablation"):
        return []
    from tunescope._progress import track
    from tunescope.inference import evaluate
    from tunescope.surgery import reinit_layers, restore_layers

    task = ctx.task
    tuned = ctx.classifier()
    base = ctx.encoder(ctx.config.labels[0])  # the pre-trained weights (load_encoder of --model)
    examples = ctx.examples()
    shared = tuned.adapter.shared_layers()
    if shared:
        ctx.note(
            f"ablation: {tuned.family} shares one layer across all positions, so layers are restored and "
            "re-initialised all at once, not one by one."
        )
    plan = ablations(tuned.num_layers, shared=shared)
    rows = []
    reference = float("nan")
    for kind, layers in track(plan, total=len(plan), description="ablations", enabled=ctx.progress):
        if kind == "none":
            model = tuned
        elif kind == "reinit":
            model = reinit_layers(tuned, layers, seed=ctx.config.seed)
        else:  # restore, restore_top
            model = restore_layers(tuned, base, layers)
        scores = evaluate(
            model,
            examples,
            task=task,
            batch_size=ctx.config.batch_size,
            max_length=ctx.config.max_length or 128,
        )
        value = float(scores[task.metric])
        if kind == "none":
            reference = value
        rows.append(
            {
                "ablation": kind,
                "layers": format_layers(layers),
                "metric": task.metric,
                "value": value,
                "delta": value - reference,
            }
        )
        del model
    return [Table("ablation", COLUMNS, rows)]


STAGE = Stage(
    name="ablation",
    title="Which layers' fine-tuning matters",
    run=run,
    description=(
        "The fine-tuned model with one layer (or the top layers) put back to its pre-trained weights, "
        "or re-initialised, evaluated without retraining (Merchant et al. 2020)."
    ),
    after=("truncation",),
)
