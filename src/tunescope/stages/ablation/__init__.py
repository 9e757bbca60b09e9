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

Embeddings, pooler and classifier head always stay fine-tuned. The ablated layers are copies (every
layer restored once and re-initialised once; a layer's re-drawn weights do not depend on which other
layers are re-drawn); the weights of the tuned and pre-trained models are never modified. An ablation
whose lowest changed layer is ``k`` computes what the tuned model computes below ``k``, so each batch
runs the tuned model once, keeping every layer's output, and each ablation only from layer ``k`` up
(:func:`tunescope.replay.replay_predictions`; the tuned model's layer list is swapped for that pass and
put back). ALBERT shares one layer across positions, so only all layers at once can be restored or
re-initialised there, and each of its three models is evaluated on its own.

Writes ``ablation.csv``: ``ablation, layers, metric, value, ci_low, ci_high, delta, delta_ci_low,
delta_ci_high, n_boot`` (``layers`` is ``"3"`` or ``"4-6"``, empty for ``none``;
``delta = value - value(none)``). The value's interval is a bootstrap over the analysis examples; the
delta's is paired (the same resampled examples scored by both models), so a reset whose interval
contains 0 makes no measurable difference (:mod:`tunescope.intervals`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunescope.intervals import MEASURED_COLUMNS, measured
from tunescope.locations import format_layers
from tunescope.pipeline import RunContext, Stage, Table

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.inference import Predictions
    from tunescope.models import Encoder

__all__ = ["COLUMNS", "ablations"]

COLUMNS = (
    "ablation",
    "layers",
    "metric",
    *MEASURED_COLUMNS,
)


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
    from tunescope.replay import supported

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
    boot: dict[str, Any] = {
        "n_boot": ctx.config.n_boot,
        "level": ctx.config.confidence,
        "seed": ctx.config.seed,
    }
    options: dict[str, Any] = {
        "batch_size": ctx.config.batch_size,
        "max_length": ctx.config.max_length or 128,
        "progress": ctx.progress,
    }
    if supported(tuned):
        evaluated = _replayed(tuned, base, examples, plan, seed=ctx.config.seed, **options)
    else:
        evaluated = _one_by_one(tuned, base, examples, plan, seed=ctx.config.seed, **options)
    rows = []
    reference = evaluated[0]  # "none" comes first: the tuned model as it is
    for (kind, layers), found in zip(plan, evaluated, strict=True):
        value = found.interval(task.metric, **boot)
        delta = reference.difference(found, task.metric, **boot)
        rows.append(
            {
                "ablation": kind,
                "layers": format_layers(layers),
                "metric": task.metric,
                **measured(value, delta),
            }
        )
    return [Table("ablation", COLUMNS, rows, key=("ablation", "layers"))]


def _replayed(
    tuned: Encoder,
    base: Encoder,
    examples: Examples,
    plan: list[tuple[str, list[int]]],
    *,
    seed: int,
    **options: Any,
) -> list[Predictions]:
    """Every ablation from one pass of ``tuned`` per batch, each computed from its lowest changed layer up.

    The restored and re-drawn layers are made once (every layer of each, in two copies of ``tuned``);
    ablation ``S`` runs ``tuned``'s recorded layers below ``min(S)``, then from ``min(S)`` on the ablated
    layers where ``S`` says and ``tuned``'s own elsewhere, then ``tuned``'s head.
    """
    from tunescope.replay import Variant, replay_predictions
    from tunescope.surgery import reinit_layers, restore_layers

    every = list(range(1, tuned.num_layers + 1))
    own = tuned.adapter.layers(tuned.model)
    ablated = {  # only the layer modules are kept; the rest of each copy is freed
        "restore": tuned.adapter.layers(restore_layers(tuned, base, every).model),
        "reinit": tuned.adapter.layers(reinit_layers(tuned, every, seed=seed).model),
    }
    variants = []
    for kind, layers in plan:
        first = min(layers, default=len(every) + 1)
        source = ablated["reinit" if kind == "reinit" else "restore"]  # restore_top restores too
        top = tuple(source[i - 1] if i in layers else own[i - 1] for i in every[first - 1 :])
        variants.append(Variant(first - 1, top))
    found = replay_predictions(tuned, examples, variants, description="ablations", **options)
    return [r.predictions for r in found]


def _one_by_one(
    tuned: Encoder,
    base: Encoder,
    examples: Examples,
    plan: list[tuple[str, list[int]]],
    *,
    seed: int,
    progress: bool,
    **options: Any,
) -> list[Predictions]:
    """Each ablated model copied and evaluated on its own: for ALBERT, whose positions share one layer."""
    from tunescope._progress import track
    from tunescope.inference import predictions
    from tunescope.surgery import reinit_layers, restore_layers

    evaluated = []
    for kind, layers in track(plan, total=len(plan), description="ablations", enabled=progress):
        if kind == "none":
            model = tuned
        elif kind == "reinit":
            model = reinit_layers(tuned, layers, seed=seed)
        else:  # restore, restore_top
            model = restore_layers(tuned, base, layers)
        evaluated.append(predictions(model, examples, **options))
        del model
    return evaluated


STAGE = Stage(
    name="ablation",
    title="Which layers' fine-tuning matters",
    run=run,
    seeded=True,
    description=(
        "The fine-tuned model with one layer (or the top layers) put back to its pre-trained weights, "
        "or re-initialised, evaluated without retraining (Merchant et al. 2020)."
    ),
    after=("truncation",),
)
