"""Stage ``heads``: which attention heads matter, for the task and for pre-training (Chiang & Chen 2021).

Michel et al. (2019) score a head by the gradient of a loss with respect to a gate on its output
(:func:`tunescope.heads.head_importance`). Chiang & Chen (2021) use that score to ask whether the heads
that matter for the pre-training task (masked-LM) are those that matter downstream, and whether a
model pruned before fine-tuning does as well as one pruned after. The stage answers both on the run's
models, with the first ``--heads.limit`` analysis examples:

* ``heads.csv``: importance maps (model, objective, layer, head, location, importance, normalized) of
  the pre-trained model for ``mlm`` and ``kl``, and of the fine-tuned classifier for ``task``, ``mlm``
  and ``kl``. A checkpoint without a masked-LM head (the embedded MiniLM) gets one fitted on its frozen
  encoder, and the objective reads ``mlm (fitted head)``; that one head scores both models, so the
  fine-tuned model is scored on the pre-training task as the pre-trained model reads it.
* ``head_coherence.csv``: agreement of two maps (MLM vs task; base vs tuned), Spearman, Kendall and
  top/bottom-k overlap with bootstrap intervals over batches of examples
  (:func:`tunescope.heads.coherence`).
* ``pruning.csv``: the fine-tuned model's metric as its heads are masked ``--heads.step`` of them at a
  time, ranked by task importance, by MLM importance and at random (the control, one curve per seed),
  re-scored after each step (Michel et al.); ``head_pruning_summary.csv``: per ranking, how many heads
  go for at most ``--heads.max-loss`` points and the mean metric over the curve.
* ``head_speed.csv``: the heads the task ranking says can go, removed physically
  (:func:`tunescope.surgery.prune_heads`): parameters and seconds per batch before and after.
* ``head_transfer.csv``: the pre-trained model pruned by MLM importance at ``--heads.transfer-fraction``
  and then fine-tuned, against the fine-tuned model pruned by task importance at the same fraction and
  the full model (same recipe and seed): can a task-agnostic pruned model be made before fine-tuning?
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tunescope.errors import InputError
from tunescope.heads import COHERENCE_COLUMNS, HEADS_COLUMNS, PRUNING_COLUMNS
from tunescope.intervals import MEASURED_COLUMNS, measured
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.heads import HeadImportance
    from tunescope.inference import Predictions
    from tunescope.models import Encoder

MAP_BATCH = 8
"""Examples per batch of the importance maps: small, so the bootstrap over batches has many (16 of 128)."""
MIN_BATCHES = 10
"""Fewest batches for intervals over batches of examples; with fewer, ``coherence`` resamples heads."""

__all__ = ["COLUMNS", "HeadsOptions", "SPEED_COLUMNS", "SUMMARY_COLUMNS", "TRANSFER_COLUMNS"]

COLUMNS = HEADS_COLUMNS
PAIR_COLUMNS = COHERENCE_COLUMNS
CURVE_COLUMNS = ("model", "rank_by", "rank_seed", *PRUNING_COLUMNS[1:])
"""``rank_seed``: the seed of the ranking (the random control has several); ``seed`` is fine-tuning's."""
SUMMARY_COLUMNS = (
    "model",
    "rank_by",
    "metric",
    "full_value",
    "max_loss",
    "heads_prunable",
    "fraction_prunable",
    "value_at",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "vs_task",
    "vs_task_ci_low",
    "vs_task_ci_high",
    "mean_value",
    "rank_seeds",
    "n_boot",
)
SPEED_COLUMNS = (
    "heads_pruned",
    "params",
    "params_pruned",
    "seconds_per_batch",
    "seconds_per_batch_pruned",
    "speedup",
    "metric",
    "value",
    "value_pruned",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "n_boot",
)
TRANSFER_COLUMNS = (
    "order",
    "fraction",
    "ranked_by",
    "heads_pruned",
    "metric",
    *MEASURED_COLUMNS,
    "params",
    "train_seconds",
)


@dataclass(frozen=True)
class HeadsOptions:
    """Options of the ``heads`` stage."""

    limit: int = option(
        128, help="Analysis examples scored for the maps and the curves (0 = all).", metavar="N"
    )
    step: float = option(0.1, help="Share of all heads masked per pruning step.", metavar="FRACTION")
    rescore: bool = option(True, help="Re-score importance under the mask after each step (Michel et al.).")
    random_seeds: int = option(3, help="Seeds of the random-ranking control curve.", metavar="N")
    max_loss: float = option(
        1.0, help="Points of the metric a prunable set of heads may cost.", metavar="POINTS"
    )
    transfer_fraction: float | None = option(
        0.3, help="Share of heads pruned before vs after fine-tuning; none skips it.", metavar="FRACTION"
    )

    mlm_steps: int = option(
        300, help="Adam steps of the MLM head fitted when the checkpoint has none.", metavar="N"
    )

    def __post_init__(self) -> None:
        checks = (
            ("mlm-steps", isinstance(self.mlm_steps, int) and self.mlm_steps >= 1, "at least 1"),
            ("limit", isinstance(self.limit, int) and self.limit >= 0, "0 (all) or more examples"),
            ("step", 0 < self.step < 1, "in (0, 1), e.g. 0.1"),
            ("random-seeds", isinstance(self.random_seeds, int) and self.random_seeds >= 0, "0 or more"),
            ("max-loss", self.max_loss >= 0, "0 or more points"),
            (
                "transfer-fraction",
                self.transfer_fraction is None or 0 < self.transfer_fraction < 1,
                "in (0, 1), or none",
            ),
        )
        for name, ok, want in checks:
            if not ok:
                value = getattr(self, name.replace("-", "_"))
                raise InputError(f"--heads.{name} must be {want}, got {value!r}")


def _settings(ctx: RunContext, mlm_head: Any = None) -> dict[str, Any]:
    return {
        "batch_size": ctx.config.batch_size,
        "max_length": ctx.config.max_length,
        "progress": ctx.progress,
        "seed": ctx.config.seed,
        "cache_dir": ctx.cache_dir / "heads",
        "mlm_head": mlm_head,
    }


def _pretrained_mlm_head(ctx: RunContext, examples: Examples) -> Any:
    """The masked-LM head fitted on the frozen pre-trained encoder, when its checkpoint has none.

    Both models are scored on the pre-training objective through this one head, so the fine-tuned
    model's ``mlm`` importance says which heads its states still need to be read as the pre-trained
    model's were (a fine-tuned folder keeps no MLM head of its own). ``None``: the checkpoint has its
    own head, which scores the pre-trained model, and the fine-tuned one gets a head fitted on it.
    """
    from tunescope.heads import FITTED_LABEL, fit_mlm_head, objective_label

    base = ctx.encoder(ctx.config.labels[0])
    if objective_label(base, "mlm") != FITTED_LABEL:
        return None
    return fit_mlm_head(
        base,
        examples,
        steps=ctx.config.options_for("heads").mlm_steps,
        max_length=ctx.config.max_length,
        seed=ctx.config.seed,
        cache_dir=ctx.cache_dir / "heads",
        progress=ctx.progress,
    )


def _maps(
    ctx: RunContext, examples: Examples, tuned: Encoder | None, mlm_head: Any
) -> dict[tuple[str, str], HeadImportance]:
    """Importance maps: the pre-trained encoder for mlm and kl, the fine-tuned classifier for all three."""
    from tunescope.heads import head_importance_batches

    base_name, tuned_name = ctx.config.labels
    settings = {**_settings(ctx, mlm_head), "batch_size": MAP_BATCH}
    maps = {}
    for objective in ("mlm", "kl"):
        maps[base_name, objective] = head_importance_batches(
            ctx.encoder(base_name), examples, objective, **settings
        )
    if tuned is not None:
        for objective in ("task", "mlm", "kl"):
            maps[tuned_name, objective] = head_importance_batches(tuned, examples, objective, **settings)
    return maps


def _coherence_rows(ctx: RunContext, maps: dict[tuple[str, str], HeadImportance]) -> list[dict[str, Any]]:
    from tunescope.heads import coherence

    base, tuned = ctx.config.labels
    pairs = [
        ((tuned, "mlm"), (tuned, "task")),
        ((tuned, "kl"), (tuned, "task")),
        ((base, "mlm"), (tuned, "mlm")),
        ((base, "kl"), (tuned, "kl")),
    ]
    if (tuned, "task") not in maps:
        pairs = [((base, "mlm"), (base, "kl"))]
    rows: list[dict[str, Any]] = []
    for key_a, key_b in pairs:
        a, b = maps[key_a], maps[key_b]
        names = (f"{key_a[0]}: {a.label}", f"{key_b[0]}: {b.label}")
        # a bootstrap over batches needs enough of them; else the maps' heads are resampled
        same_batches = a.batch_indices == b.batch_indices and a.n_batches >= MIN_BATCHES
        rows += coherence(
            a if same_batches else a.scores,
            b if same_batches else b.scores,
            seed=ctx.config.seed,
            names=names,
        )
    return rows


Kept = dict[tuple[str, int], dict[int, "Predictions"]]
"""What the task head predicted at each step of each curve: ``{(rank_by, seed): {heads_pruned: ...}}``."""


def _boot(ctx: RunContext) -> dict[str, Any]:
    return {"n_boot": ctx.config.n_boot, "level": ctx.config.confidence, "seed": ctx.config.seed}


def _curves(
    ctx: RunContext, tuned: Encoder, examples: Examples, mlm_head: Any
) -> tuple[list[dict[str, Any]], Kept]:
    """Pruning curves of the fine-tuned model, evaluated on the task: ranked by task, MLM and at random."""
    from tunescope.heads import prune_curve

    opts: HeadsOptions = ctx.config.options_for("heads")
    rankings = [("task", ctx.config.seed), ("mlm", ctx.config.seed)]
    rankings += [("random", ctx.config.seed + i) for i in range(opts.random_seeds)]
    settings = {**_settings(ctx, mlm_head), "metric": ctx.task.metric}
    rows = []
    kept: Kept = {}
    for rank_by, seed in rankings:
        found, kept[rank_by, seed] = prune_curve(
            tuned,
            examples,
            rank_by=rank_by,
            objective="task",
            step=opts.step,
            rescore=opts.rescore,
            n_boot=ctx.config.n_boot,
            level=ctx.config.confidence,
            keep_predictions=True,
            **{**settings, "seed": seed},
        )
        rows += [{**row, "model": ctx.config.labels[1], "rank_seed": seed} for row in found]
    return rows, kept


def _summary(ctx: RunContext, curves: list[dict[str, Any]], kept: Kept, total: int) -> list[dict[str, Any]]:
    """Per ranking: the most heads pruned within ``max_loss`` points, and the curve's mean metric.

    The count is read on the mean over seeds; ``delta`` (at that count, against no pruning) and
    ``vs_task`` (this ranking minus the task ranking, both at the task ranking's count) are paired
    intervals over the examples, from the first seed's curve.
    """
    max_loss = ctx.config.options_for("heads").max_loss
    metric = ctx.task.metric
    boot = _boot(ctx)
    rows = []
    task_count = None
    for rank_by in dict.fromkeys(r["rank_by"] for r in curves):
        mine = [r for r in curves if r["rank_by"] == rank_by and r["metric"] == metric]
        seeds = sorted({r["rank_seed"] for r in mine})
        steps = sorted({r["heads_pruned"] for r in mine})
        mean = {n: statistics.fmean(r["value"] for r in mine if r["heads_pruned"] == n) for n in steps}
        full = mean[0]
        within = [n for n in steps if mean[n] >= full - max_loss / 100]
        most = max(within)
        task_count = most if rank_by == "task" else task_count
        steps_kept = kept[rank_by, seeds[0]]
        delta = steps_kept[0].difference(steps_kept[most], metric, **boot)
        at = task_count if task_count is not None else most
        task_kept = kept.get(("task", ctx.config.seed), steps_kept)
        versus = task_kept[at].difference(steps_kept[at], metric, **boot)
        rows.append(
            {
                "model": mine[0]["model"],
                "rank_by": rank_by,
                "metric": metric,
                "full_value": full,
                "max_loss": max_loss,
                "heads_prunable": most,
                "fraction_prunable": most / total,
                "value_at": mean[most],
                "delta": delta.value,
                "delta_ci_low": delta.low,
                "delta_ci_high": delta.high,
                "vs_task": versus.value,
                "vs_task_ci_low": versus.low,
                "vs_task_ci_high": versus.high,
                "mean_value": statistics.fmean(mean.values()),
                "rank_seeds": len(seeds),
                "n_boot": ctx.config.n_boot,
            }
        )
    return rows


def _seconds_per_batch(encoder: Encoder, examples: Examples, batch_size: int, max_length: int) -> float:
    """Median seconds of a forward pass over batches of ``examples`` (after one warm-up batch)."""
    from tunescope.inference import collator, features, length_batches

    rows = features(encoder.tokenizer, examples, max_length)
    collate = collator(encoder.tokenizer, "sequence")
    batches = list(length_batches(rows, batch_size))[:8]
    model, device = encoder.model.eval(), encoder.device
    times = []
    with torch.inference_mode():
        for i, batch in enumerate([batches[0], *batches]):  # the first is a warm-up
            inputs = collate([rows[j] for j in batch])
            inputs.pop("labels")
            inputs = {k: v.to(device) for k, v in inputs.items()}
            start = time.perf_counter()
            model(**inputs)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _speed(
    ctx: RunContext,
    tuned: Encoder,
    examples: Examples,
    summary: list[dict[str, Any]],
    curves: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The task ranking's prunable heads removed physically: parameters and latency before and after."""
    from tunescope.inference import predictions
    from tunescope.surgery import count_parameters, prune_heads

    (task_row,) = [r for r in summary if r["rank_by"] == "task"]
    if not task_row["heads_prunable"]:
        ctx.note("heads: no head can go within the allowed loss, so nothing is pruned physically.")
        return []
    (step,) = [
        r for r in curves if r["rank_by"] == "task" and r["heads_pruned"] == task_row["heads_prunable"]
    ]
    pruned = prune_heads(tuned, step["pruned"].split(";"))
    max_length = ctx.config.max_length or 128
    metric = ctx.task.metric
    found = [
        predictions(m, examples, batch_size=ctx.config.batch_size, max_length=max_length)
        for m in (tuned, pruned)
    ]
    delta = found[0].difference(found[1], metric, **_boot(ctx))
    times = [_seconds_per_batch(m, examples, ctx.config.batch_size, max_length) for m in (tuned, pruned)]
    return [
        {
            "heads_pruned": task_row["heads_prunable"],
            "params": count_parameters(tuned),
            "params_pruned": count_parameters(pruned),
            "seconds_per_batch": times[0],
            "seconds_per_batch_pruned": times[1],
            "speedup": times[0] / times[1],
            "metric": metric,
            "value": found[0].score(metric),
            "value_pruned": found[1].score(metric),
            "delta": delta.value,
            "delta_ci_low": delta.low,
            "delta_ci_high": delta.high,
            "n_boot": ctx.config.n_boot,
        }
    ]


def _transfer(
    ctx: RunContext, tuned: Encoder, maps: dict[tuple[str, str], HeadImportance]
) -> list[dict[str, Any]]:
    """Prune-then-tune (by the pre-trained model's MLM importance) vs tune-then-prune (by task importance)."""
    from tunescope.finetune.model import fresh_classifier
    from tunescope.heads import least_important
    from tunescope.inference import predictions
    from tunescope.models import load_classifier
    from tunescope.surgery import count_parameters, prune_heads

    fraction = ctx.config.options_for("heads").transfer_fraction
    base, tuned_name = ctx.config.labels
    examples, metric = ctx.examples(), ctx.task.metric
    max_length = ctx.config.max_length or 128
    full_result = ctx.experiment_full()
    same = ctx.config.tuned is None and full_result.path == ctx.train("tuned").path
    full = tuned if same else load_classifier(full_result.path, device=str(ctx.device))
    before = least_important(maps[base, "mlm"].scores, fraction)
    start = prune_heads(fresh_classifier(ctx.config.model, ctx.task, ctx.config.seed), before)
    trained = ctx.train("heads-pruned-then-tuned", model=start, experiment=True)
    del start
    pruned_first = load_classifier(trained.path, device=str(ctx.device))
    after = least_important(maps[tuned_name, "task"].scores, fraction)
    pruned_after = prune_heads(full, after)
    arms = [
        ("full", 0.0, "", 0, full, full_result.train_seconds),
        (
            "prune_then_tune",
            fraction,
            f"{base}: {maps[base, 'mlm'].label}",
            sum(len(h) for h in before.values()),
            pruned_first,
            trained.train_seconds,
        ),
        (
            "tune_then_prune",
            fraction,
            f"{tuned_name}: task",
            sum(len(h) for h in after.values()),
            pruned_after,
            full_result.train_seconds,
        ),
    ]
    boot = _boot(ctx)
    rows = []
    reference = None
    for order, share, ranked_by, n_pruned, model, seconds in arms:
        found = predictions(model, examples, batch_size=ctx.config.batch_size, max_length=max_length)
        if reference is None:
            reference = found
        value, delta = found.interval(metric, **boot), reference.difference(found, metric, **boot)
        rows.append(
            {
                "order": order,
                "fraction": share,
                "ranked_by": ranked_by,
                "heads_pruned": n_pruned,
                "metric": metric,
                **measured(value, delta),
                "params": count_parameters(model),
                "train_seconds": seconds,
            }
        )
    return rows


def run(ctx: RunContext) -> list[Table]:
    """Importance maps, their coherence, pruning curves, physical pruning and the transfer experiment."""
    opts: HeadsOptions = ctx.config.options_for("heads")
    examples = ctx.examples()
    if opts.limit and len(examples) > opts.limit:
        examples = examples.head(opts.limit)
        ctx.note(f"heads: importance maps and pruning curves use the first {opts.limit} analysis examples.")
    tuned = ctx.classifier() if ctx.has_classifier("heads") else None
    mlm_head = _pretrained_mlm_head(ctx, examples)
    maps = _maps(ctx, examples, tuned, mlm_head)
    tables = [
        Table("heads", COLUMNS, [row for (model, _), found in maps.items() for row in found.rows(model)]),
        Table(
            "head_coherence",
            PAIR_COLUMNS,
            _coherence_rows(ctx, maps),
            key=("map_a", "map_b", "statistic", "k"),
        ),
    ]
    if tuned is None:
        return tables
    curves, kept = _curves(ctx, tuned, examples, mlm_head)
    summary = _summary(ctx, curves, kept, tuned.num_layers * tuned.num_heads)
    tables += [
        Table("pruning", CURVE_COLUMNS, curves, key=("rank_by", "rank_seed", "heads_pruned", "metric")),
        Table("head_pruning_summary", SUMMARY_COLUMNS, summary, key=("rank_by",)),
    ]
    if tuned.adapter.shared_layers():
        ctx.note(
            f"heads: {tuned.family} runs one shared layer at every position, so heads are masked per "
            "position but not removed physically (that would remove them everywhere): no speed or "
            "prune-then-tune tables."
        )
        return tables
    tables.append(Table("head_speed", SPEED_COLUMNS, _speed(ctx, tuned, examples, summary, curves)))
    if opts.transfer_fraction is None:
        ctx.note("heads: --heads.transfer-fraction none, so pruning before vs after fine-tuning is skipped.")
    elif not ctx.config.finetune:
        ctx.note("heads: the run may not fine-tune (--no-finetune), so prune-then-tune is skipped.")
    else:
        tables.append(Table("head_transfer", TRANSFER_COLUMNS, _transfer(ctx, tuned, maps), key=("order",)))
    return tables


STAGE = Stage(
    name="heads",
    title="Attention heads: importance, pruning, MLM vs task",
    run=run,
    options=HeadsOptions,
    seeded=True,
    description=(
        "Gradient importance of every head (Michel et al. 2019) for the task, masked-LM and a label-free "
        "objective; pruning curves; whether the heads that matter for pre-training matter for the task, "
        "and pruning before vs after fine-tuning (Chiang & Chen 2021)."
    ),
    after=("domains",),
)
