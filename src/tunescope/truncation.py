"""Truncation sweeps: a fine-tuned classifier's metric with only its bottom k layers, no retraining.

Phang et al. (2021) found that the top layers of a fine-tuned encoder can often be dropped with little
loss. :func:`truncation_sweep` cuts the tuned classifier after layer k for k = L..1 (pooler and
classifier kept; see :func:`tunescope.surgery.truncate`) and evaluates each cut model with the task's
metric; :func:`recommend` picks the fewest layers within a point of the full model;
:func:`evaluate_pair` scores a model before and after a change (``tunescope truncate --keep`` and
``tunescope compress``). The ``truncation`` stage and ``tunescope truncate`` both call these.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunescope.intervals import MEASURED_COLUMNS

if TYPE_CHECKING:
    import torch

    from tunescope.data import Examples, Task
    from tunescope.inference import Predictions
    from tunescope.models import Encoder

__all__ = ["COLUMNS", "evaluate_pair", "recommend", "truncation_sweep"]

COLUMNS = (
    "layers_kept",
    "metric",
    *MEASURED_COLUMNS,
    "params",
    "seconds_per_batch",
)
"""``value`` with its bootstrap interval over examples; ``delta`` = value minus the full model's, with
its paired interval (the same resampled examples for both)."""


def truncation_sweep(
    tuned: Encoder,
    examples: Examples,
    task: Task,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The task metric of ``tuned`` cut after layer k, for k = L..1, without retraining, with intervals.

    Each row is the evaluation of :func:`tunescope.surgery.truncate` ``(tuned, k)`` on ``examples``
    with the task's primary metric: the predictions :func:`tunescope.inference.predictions` gives for
    the cut model. They come from one pass of ``tuned`` per batch (:mod:`tunescope.replay`): the model
    cut after layer k is its head (pooler and classifier) on layer k's output, so every layer runs once
    per batch and each cut adds only the embeddings and the head. ALBERT, whose positions share one
    layer module, is evaluated one cut model at a time instead.

    ``seconds_per_batch`` is the time one batch takes through the cut model: its share of the
    tokenisation, collation, the embeddings, layers 1..k (timed inside the shared pass), the head and
    reading the logits back; for ALBERT, that cut model's own evaluation time over the number of
    batches. Both are measured after one untimed warm-up batch.

    ``ci_low``/``ci_high`` is the percentile bootstrap interval of the metric over examples and
    ``delta`` (value minus the full model's) has a paired interval (:mod:`tunescope.intervals`): the
    predictions are resampled, the models are not re-run. Every row uses the same ``seed``, so the
    resamples are the same examples throughout the sweep.

    Args:
        tuned: A fine-tuned sequence classifier (e.g. from :func:`tunescope.load_classifier`).
        examples: Labelled examples of ``task``.
        task: Gives the metric (``task.metric``).
        batch_size: Examples per forward pass.
        max_length: Inputs are truncated to this many tokens.
        device: Evaluate there (default: where ``tuned`` is).
        progress: Progress bars on stderr.
        n_boot: Bootstrap resamples (at least 100).
        level: Coverage of the intervals.
        seed: Seed of the resampling.

    Returns:
        One dict per k, from L down to 1, with the keys of :data:`COLUMNS`: ``layers_kept``,
        ``metric``, ``value`` and its interval, ``delta`` and its interval, ``n_boot``, ``params``
        (parameters of the cut model) and ``seconds_per_batch``.

    Example:
        >>> import numpy as np
        >>> from tunescope.data import Examples, get_task
        >>> from tunescope.testing.tiny import tiny_model
        >>> ex = Examples(["good", "bad", "fine"], None, np.array([1, 0, 1]), "demo", "validation",
        ...               ("negative", "positive"))
        >>> rows = truncation_sweep(tiny_model("bert", task="classifier", num_layers=3), ex,
        ...                         get_task("movie-sentiment"))
        >>> [r["layers_kept"] for r in rows], rows[0]["metric"]
        ([3, 2, 1], 'accuracy')
    """
    from tunescope.inference import predictions
    from tunescope.intervals import check_interval_options, measured
    from tunescope.replay import supported

    check_interval_options(n_boot, level)
    metric = task.metric
    # one untimed batch first, so the first row's time does not include one-off costs (imports, caches)
    predictions(tuned, examples.head(batch_size), batch_size=batch_size, max_length=max_length, device=device)
    keeps = list(range(tuned.num_layers, 0, -1))
    options: dict[str, Any] = {"batch_size": batch_size, "max_length": max_length, "device": device}
    sweep = _replayed if supported(tuned) else _one_by_one
    evaluated = sweep(tuned, examples, keeps, progress=progress, **options)
    rows = []
    full = evaluated[0][0]
    for keep, (found, params, seconds) in zip(keeps, evaluated, strict=True):
        value = found.interval(metric, n_boot=n_boot, level=level, seed=seed)
        delta = full.difference(found, metric, n_boot=n_boot, level=level, seed=seed)
        rows.append(
            {
                "layers_kept": keep,
                "metric": metric,
                **measured(value, delta),
                "params": params,
                "seconds_per_batch": seconds,
            }
        )
    return rows


_Evaluated = tuple["Predictions", int, float]
"""One cut model's predictions, parameter count and seconds per batch."""


def _replayed(
    tuned: Encoder, examples: Examples, keeps: Sequence[int], *, progress: bool, **options: Any
) -> list[_Evaluated]:
    """Every cut from one pass of ``tuned`` per batch: layer k's recorded output, then the head."""
    from tunescope.replay import Variant, layers_swapped, replay_predictions
    from tunescope.surgery import count_parameters

    found = replay_predictions(
        tuned,
        examples,
        [Variant(k) for k in keeps],
        progress=progress,
        description="truncation sweep",
        **options,
    )
    layers = tuned.adapter.layers(tuned.model)
    evaluated = []
    for keep, replayed in zip(keeps, found, strict=True):
        with layers_swapped(tuned, layers[:keep]):  # the parameters of truncate(tuned, keep), without a copy
            params = count_parameters(tuned)
        evaluated.append((replayed.predictions, params, replayed.seconds_per_batch))
    return evaluated


def _one_by_one(
    tuned: Encoder, examples: Examples, keeps: Sequence[int], *, progress: bool, **options: Any
) -> list[_Evaluated]:
    """Each cut model evaluated on its own: for ALBERT, where one layer module serves every position."""
    from tunescope._progress import track
    from tunescope.inference import predictions
    from tunescope.surgery import count_parameters, truncate

    n_batches = max(1, -(-len(examples) // options["batch_size"]))
    evaluated = []
    for keep in track(keeps, total=len(keeps), description="truncation sweep", enabled=progress):
        model = truncate(tuned, keep)
        start = time.perf_counter()
        found = predictions(model, examples, **options)
        evaluated.append((found, count_parameters(model), (time.perf_counter() - start) / n_batches))
    return evaluated


def recommend(rows: Sequence[dict[str, Any]], points: float = 1.0) -> dict[str, Any] | None:
    """The row with the fewest layers whose metric is within ``points`` points of the full model's.

    A point is 0.01 of the metric (one percentage point of accuracy). The full model is the row with
    the most layers kept.

    Args:
        rows: Rows of :func:`truncation_sweep` (or of ``truncation.csv``, values as numbers).
        points: Allowed loss, in points.

    Returns:
        That row, or ``None`` when there are no rows or the full model's value is NaN.

    Example:
        >>> rows = [{"layers_kept": 3, "value": 0.90}, {"layers_kept": 2, "value": 0.895},
        ...         {"layers_kept": 1, "value": 0.70}]
        >>> recommend(rows)["layers_kept"]
        2
    """
    if not rows:
        return None
    ordered = sorted(rows, key=lambda r: int(r["layers_kept"]))
    full = float(ordered[-1]["value"])
    if math.isnan(full):
        return None
    return next(r for r in ordered if float(r["value"]) >= full - points / 100)


def evaluate_pair(
    before: Encoder,
    after: Encoder,
    examples: Examples,
    task: Task,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    progress: bool = False,
) -> tuple[float, float]:
    """The task metric of ``before`` and ``after`` (e.g. a model and its truncated copy) on ``examples``.

    Both are scored with :func:`tunescope.inference.evaluate` and the task's primary metric, each where
    its weights are.

    Args:
        before: The model as it was.
        after: The changed model.
        examples: Labelled examples of ``task``.
        task: Gives the metric (``task.metric``).
        batch_size: Examples per forward pass.
        max_length: Inputs are truncated to this many tokens.
        progress: Progress bars on stderr.

    Returns:
        ``(metric of before, metric of after)``.

    Example:
        >>> import numpy as np
        >>> from tunescope.data import Examples, get_task
        >>> from tunescope.surgery import truncate
        >>> from tunescope.testing.tiny import tiny_model
        >>> ex = Examples(["good", "bad"], None, np.array([1, 0]), "demo", "validation",
        ...               ("negative", "positive"))
        >>> tuned = tiny_model("bert", task="classifier", num_layers=3)
        >>> full, cut = evaluate_pair(tuned, truncate(tuned, 1), ex, get_task("movie-sentiment"))
        >>> 0 <= full <= 1 and 0 <= cut <= 1
        True
    """
    from tunescope.inference import evaluate

    values = []
    for model in (before, after):
        scores = evaluate(
            model, examples, task=task, batch_size=batch_size, max_length=max_length, progress=progress
        )
        values.append(scores[task.metric])
    return values[0], values[1]
