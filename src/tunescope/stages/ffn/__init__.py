"""Stage ``ffn``: remove FFN sublayers, fine-tune, and compare with the full model.

Sridhar & Sarah (2020, "Undivided attention: are intermediate layers necessary for BERT?") remove the
feed-forward (intermediate) sublayer of some layers before fine-tuning and find that the task barely
suffers while the model gets smaller and faster. This stage repeats the experiment on the run's model
and task:

1. **Which layers.** ``--ffn.layers`` when given. Otherwise the stage measures, in the pre-trained
   model, how much each layer's FFN changes the representation: :func:`ffn_cka` is the linear CKA
   (Kornblith et al. 2019) between the FFN sublayer's input ``a`` (the attention block's output) and the
   layer's output ``LayerNorm(a + FFN(a))``, over every non-padding token of the analysis inputs (the
   FFN acts on each token separately, so tokens, not pooled sentences, are what it changes). CKA near 1
   means the FFN leaves the token geometry almost as it found it (up to rotation and scale), so removing
   it should cost least; the FFN goes from the ``max(1, L // 3)`` layers with the highest CKA.
2. **Fine-tune both.** ``full`` is the run's own fine-tuned model (``RUN/models/tuned``); when the
   fine-tuned model was given with ``--tuned`` (trained elsewhere, perhaps otherwise), an unmodified
   baseline is fine-tuned here into ``RUN/models/full`` so both sides share data, recipe and machine.
   ``ffn_removed`` is the pre-trained model with those FFNs removed
   (:func:`tunescope.surgery.remove_ffn`), fine-tuned the same way from the same seeded head into
   ``RUN/models/ffn-removed`` (the removal is recorded in its config, so it loads back without them).
3. **Evaluate both** on the analysis split: :func:`tunescope.inference.predictions` keeps what each
   model predicted, scored with the task's metric as :func:`tunescope.inference.evaluate` scores it (as
   the ``truncation`` and ``ablation`` stages do, so the three tables compare). Each arm's metric gets a
   percentile bootstrap interval over the analysis examples, and ``delta`` (arm - full) a *paired* one:
   both models scored on the same resampled examples (``--n-boot`` resamples at ``--confidence``;
   :mod:`tunescope.intervals`). The intervals resample stored predictions: no model runs again.

Writes ``ffn_cka.csv`` (``layer, cka, chosen``) and ``ffn.csv`` (``model, ffn_removed_layers, metric,
value, ci_low, ci_high, n_boot, delta, delta_ci_low, delta_ci_high, params, trainable_params,
train_seconds``; ``train_seconds`` is training alone, evaluation excluded; the full arm's ``delta`` is
its difference from itself, exactly 0). With ``--no-finetune`` only ``ffn_cka.csv`` is written. ALBERT
shares one FFN across its layers: it can only be removed everywhere (``--ffn.layers 1,...,L``), so
nothing is chosen by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunescope.errors import InputError
from tunescope.ffn import check_ffn_layers, choose_ffn_layers, default_count, ffn_cka
from tunescope.locations import format_layers, parse_layers
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table

if TYPE_CHECKING:
    from tunescope.finetune import FinetuneResult
    from tunescope.inference import Predictions
    from tunescope.models import Encoder

__all__ = ["COLUMNS", "CKA_COLUMNS", "check_ffn_layers", "choose_ffn_layers", "default_count", "ffn_cka"]

COLUMNS = (
    "model",
    "ffn_removed_layers",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_boot",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "params",
    "trainable_params",
    "train_seconds",
)
CKA_COLUMNS = ("layer", "cka", "chosen")


def _start_model(ctx: RunContext) -> Encoder:
    """The pre-trained model with the fresh task head the full model started from."""
    from tunescope.finetune.model import fresh_classifier

    return fresh_classifier(ctx.config.model, ctx.task, ctx.config.seed)


def _predictions(ctx: RunContext, model: Encoder) -> Predictions:
    """What ``model`` predicts for the analysis examples (run once; every interval resamples these)."""
    from tunescope.inference import predictions

    return predictions(
        model, ctx.examples(), batch_size=ctx.config.batch_size, max_length=ctx.config.max_length or 128
    )


def _row(
    ctx: RunContext,
    name: str,
    layers: list[int],
    model: Encoder,
    result: FinetuneResult,
    found: Predictions,
    full: Predictions | None,
) -> dict[str, Any]:
    """One ``ffn.csv`` row: the arm's metric with its interval, and its paired difference from ``full``
    (``None``: this is the full arm, whose difference from itself is exactly 0, not resampled)."""
    from tunescope.intervals import Interval
    from tunescope.surgery import count_parameters

    config, metric = ctx.config, ctx.task.metric
    options: dict[str, Any] = {"n_boot": config.n_boot, "level": config.confidence, "seed": config.seed}
    value = found.interval(metric, **options)
    delta = Interval(0.0, 0.0, 0.0, config.confidence, config.n_boot)
    if full is not None:
        delta = full.difference(found, metric, **options)
    return {
        "model": name,
        "ffn_removed_layers": format_layers(layers),
        "metric": metric,
        "value": value.value,
        **value.columns(),
        "delta": delta.value,
        "delta_ci_low": delta.low,
        "delta_ci_high": delta.high,
        "params": count_parameters(model),
        "trainable_params": result.trainable_parameters,
        "train_seconds": result.train_seconds,
    }


def _layers(text: str) -> tuple[int, ...]:
    return parse_layers(text, option="--ffn.layers") or ()


@dataclass(frozen=True)
class FFNOptions:
    """Options of the ``ffn`` stage."""

    layers: tuple[int, ...] | None = option(
        None,
        help="Layers whose FFN is removed before fine-tuning (e.g. 3,5 or 2-4; none = no removal); "
        "default: chosen where the FFN changes the representation least.",
        parse=_layers,
        metavar="LAYERS",
        aliases=("--ffn-layers",),
    )

    def __post_init__(self) -> None:
        if self.layers is not None and any(int(layer) < 1 for layer in self.layers):
            raise InputError(f"--ffn.layers are layers 1..L, got {format_layers(self.layers)}")


def run(ctx: RunContext) -> list[Table]:
    """``ffn_cka.csv`` from the pre-trained model; ``ffn.csv`` from fine-tuning with and without the FFNs."""
    base = ctx.encoder(ctx.config.labels[0])
    n_layers, shared = base.num_layers, base.adapter.shared_layers()
    asked = ctx.config.options_for("ffn").layers
    layers: list[int] = []
    if asked is not None:  # checked before anything is measured or trained
        layers = check_ffn_layers(asked, n_layers, shared=shared, family=base.family)
    cka = ffn_cka(
        base, ctx.examples(), batch_size=ctx.config.batch_size, max_length=ctx.config.max_length or 128
    )
    if asked is None:
        if shared:
            ctx.note(
                f"ffn: {base.family} shares one FFN across all layers, so no layer is chosen; pass "
                f"--ffn.layers {format_layers(range(1, n_layers + 1))} to remove it everywhere."
            )
        else:
            layers = choose_ffn_layers(cka, default_count(n_layers))
    rows = [{"layer": layer, "cka": value, "chosen": layer in layers} for layer, value in cka.items()]
    tables = [Table("ffn_cka", CKA_COLUMNS, rows)]
    if not ctx.config.finetune:
        ctx.note("ffn: fine-tuning is off (--no-finetune), so FFN removal is measured (CKA) but not trained.")
        return tables
    if not layers:
        if asked is not None:
            ctx.note("ffn: --ffn.layers none, so no FFN is removed and nothing is trained.")
        return tables

    from tunescope.models import load_classifier
    from tunescope.surgery import remove_ffn

    device = str(ctx.device)
    full = ctx.experiment_full()
    full_model = load_classifier(full.path, device=device)
    full_found = _predictions(ctx, full_model)
    result_rows = [_row(ctx, "full", [], full_model, full, full_found, None)]
    del full_model
    start = remove_ffn(_start_model(ctx), layers)
    removed = ctx.train("ffn-removed", model=start, experiment=True)
    del start
    removed_model = load_classifier(removed.path, device=device)
    found = _predictions(ctx, removed_model)
    result_rows.append(_row(ctx, "ffn_removed", layers, removed_model, removed, found, full_found))
    return [*tables, Table("ffn", COLUMNS, result_rows, key=("model",))]


def check(ctx: RunContext) -> None:
    """``--ffn.layers`` against the pre-trained model's depth, before anything is trained."""
    asked = ctx.config.options_for("ffn").layers
    if asked is not None:
        base = ctx.encoder(ctx.config.labels[0])
        check_ffn_layers(asked, base.num_layers, shared=base.adapter.shared_layers(), family=base.family)


STAGE = Stage(
    check=check,
    options=FFNOptions,
    seeded=True,
    name="ffn",
    title="Fine-tuning without some FFN sublayers",
    run=run,
    description=(
        "The FFN sublayer removed from the layers where it changes the representation least, then "
        "fine-tuned like the full model (Sridhar & Sarah 2020)."
    ),
    after=("ablation",),
)
