"""Confidence intervals for the findings: bootstrap over evaluation examples, and spread over seeds.

Every interval here resamples what a model already predicted, never the model: a percentile bootstrap
(Efron & Tibshirani 1993, ch. 13) draws ``n`` examples with replacement ``n_boot`` times, scores each
resample with the task's metric, and reports the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
of those scores (linear interpolation, as ``numpy.quantile``).

* :func:`metric_interval`: one model's metric.
* :func:`difference_interval`: the difference of two models' metrics on the same examples, resampled
  *paired* (the same examples for both), so the noise they share cancels; two models that predict the
  same thing get exactly ``[0, 0]``.
* ``groups``: when several predictions belong to one unit (the words of a sentence for a tagger or a
  token probe), the units are resampled instead (a cluster bootstrap), so correlated predictions are not
  counted as independent evidence.
* :func:`seed_summary`: the mean, standard deviation and Student-t interval of one number measured
  with several fine-tuning seeds: the variance between fine-tuning runs, which the bootstrap over
  examples does not see.

The class metrics (accuracy, F1, MCC) are computed from each resample's confusion counts, so
``n_boot = 1000`` resamples of 1,000 examples cost milliseconds; the correlation metrics are computed
per resample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.errors import InputError, MeasureError
from tunescope.metrics import _metric, compute_metric

__all__ = [
    "INTERVAL_COLUMNS",
    "MEASURED_COLUMNS",
    "Interval",
    "SeedSummary",
    "check_interval_options",
    "difference_interval",
    "mean_interval",
    "measured",
    "metric_interval",
    "seed_summary",
]

INTERVAL_COLUMNS = ("ci_low", "ci_high", "n_boot")
"""The columns an interval adds to a table row (:meth:`Interval.columns`)."""

MEASURED_COLUMNS = ("value", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high", "n_boot")
"""A measured metric with its interval and its paired difference from a reference (:func:`measured`)."""

MIN_BOOT = 100
"""Fewest resamples an interval is computed from (fewer give unstable 2.5% quantiles)."""


@dataclass(frozen=True)
class Interval:
    """A statistic with its percentile bootstrap interval.

    Attributes:
        value: The statistic on all examples.
        low: Lower bound (the ``(1 - level) / 2`` quantile of the resampled statistics).
        high: Upper bound (the ``(1 + level) / 2`` quantile).
        level: Coverage, e.g. 0.95.
        n_boot: Resamples drawn.
    """

    value: float
    low: float
    high: float
    level: float
    n_boot: int

    def excludes(self, point: float = 0.0) -> bool:
        """Whether ``point`` lies outside ``[low, high]`` (False when the interval is undefined)."""
        if math.isnan(self.low) or math.isnan(self.high):
            return False
        return point < self.low or point > self.high

    def columns(self) -> dict[str, Any]:
        """``{"ci_low", "ci_high", "n_boot"}`` for a table row."""
        return {"ci_low": self.low, "ci_high": self.high, "n_boot": self.n_boot}


def measured(value: Interval, delta: Interval) -> dict[str, Any]:
    """The :data:`MEASURED_COLUMNS` of a table row: a metric's interval and its paired difference's.

    Example:
        >>> same = difference_interval("accuracy", [1, 0] * 60, [1, 0] * 60, [1, 1] * 60, n_boot=100)
        >>> measured(same, same)["delta_ci_high"]
        0.0
    """
    return {
        "value": value.value,
        "ci_low": value.low,
        "ci_high": value.high,
        "delta": delta.value,
        "delta_ci_low": delta.low,
        "delta_ci_high": delta.high,
        "n_boot": value.n_boot,
    }


def check_interval_options(n_boot: int, level: float) -> None:
    """Refuse fewer than :data:`MIN_BOOT` resamples or a level outside (0, 1)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < MIN_BOOT:
        raise InputError(f"n_boot must be a whole number of at least {MIN_BOOT} resamples, got {n_boot!r}")
    if isinstance(level, bool) or not 0 < level < 1:
        raise InputError(f"the confidence level must be strictly between 0 and 1 (e.g. 0.95), got {level!r}")


# ------------------------------------------------------------------------------------------------
# resampling
# ------------------------------------------------------------------------------------------------
def _units(n_items: int, groups: Any) -> tuple[np.ndarray | None, int]:
    """Each item's unit id ``0..n_units-1`` (``None`` without ``groups``: its own) and the unit count."""
    if groups is None:
        return None, n_items
    ids = np.asarray(groups).reshape(-1)
    if ids.shape[0] != n_items:
        raise MeasureError(f"{ids.shape[0]} group ids for {n_items} predictions; they must match")
    _, codes = np.unique(ids, return_inverse=True)
    return codes, int(codes.max()) + 1


def _draws(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_units)`` unit indices drawn with replacement; the same for a given seed."""
    return np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))


def _quantiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size / 2:  # most resamples undefined (e.g. a constant prediction)
        return math.nan, math.nan
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------------
# per-resample metrics
# ------------------------------------------------------------------------------------------------
def _confusions(
    pred: np.ndarray, gold: np.ndarray, units: np.ndarray | None, n_units: int, draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(n_boot, k, k)`` confusion counts (rows gold, columns predicted) of every resample, and the classes.

    ``units`` is each item's unit id (``None``: every item its own unit, ``draws`` index items).
    """
    classes = np.unique(np.concatenate([pred, gold]))
    k = classes.size
    cell = np.searchsorted(classes, gold) * k + np.searchsorted(classes, pred)
    n_boot = draws.shape[0]
    offsets = (np.arange(n_boot) * (k * k))[:, None]
    if units is None:
        flat = np.bincount((offsets + cell[draws]).ravel(), minlength=n_boot * k * k)
        return flat.reshape(n_boot, k, k).astype(np.float64), classes
    per_unit = np.zeros((n_units, k * k))
    np.add.at(per_unit, (units, cell), 1)
    # how often each resample drew each unit, times that unit's counts
    times = np.bincount((np.arange(n_boot)[:, None] * n_units + draws).ravel(), minlength=n_boot * n_units)
    counts = times.reshape(n_boot, n_units).astype(np.float64) @ per_unit
    return counts.reshape(n_boot, k, k), classes


def _from_confusion(name: str, c: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The class metric ``name`` of each confusion matrix in ``c`` ``(n_boot, k, k)``, as sklearn has it."""
    total = c.sum(axis=(1, 2))
    tp = np.einsum("bii->bi", c)
    if name == "accuracy":
        return tp.sum(1) / total
    true_counts, pred_counts = c.sum(2), c.sum(1)
    if name == "f1":
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = np.where(true_counts + pred_counts > 0, 2 * tp / (true_counts + pred_counts), 0.0)
        binary = set(classes.tolist()).issubset({0, 1})
        if binary:
            return per_class[:, -1] if classes[-1] == 1 else np.zeros(len(c))
        present = (true_counts + pred_counts) > 0  # sklearn averages over the labels present
        return (per_class * present).sum(1) / present.sum(1)
    if name == "mcc":
        correct = tp.sum(1)
        cov_ytyp = correct * total - (true_counts * pred_counts).sum(1)
        cov_ypyp = total**2 - (pred_counts**2).sum(1)
        cov_ytyt = total**2 - (true_counts**2).sum(1)
        denom = np.sqrt(cov_ytyt * cov_ypyp)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, cov_ytyp / denom, 0.0)
    raise MeasureError(f"no confusion-count form of {name}")


def _resampled(
    name: str, pred: np.ndarray, gold: np.ndarray, units: np.ndarray | None, n_units: int, draws: np.ndarray
) -> np.ndarray:
    """The metric ``name`` on each resample of units in ``draws``: ``(n_boot,)``.

    ``units`` is each item's unit id, or ``None`` when every item is its own unit.
    """
    if name in ("accuracy", "f1", "mcc"):
        counts, classes = _confusions(pred, gold, units, n_units, draws)
        return _from_confusion(name, counts, classes)
    members: list[np.ndarray] = []
    if units is not None:
        order = np.argsort(units, kind="stable")
        starts = np.searchsorted(units[order], np.arange(n_units + 1))
        members = [order[starts[u] : starts[u + 1]] for u in range(n_units)]
    values = np.empty(draws.shape[0])
    for b, draw in enumerate(draws):
        take = draw if units is None else np.concatenate([members[u] for u in draw])
        values[b] = compute_metric(name, pred[take], gold[take])
    return values


def _checked(name: str, pred: Any, gold: Any, n_boot: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    _metric(name)
    check_interval_options(n_boot, level)
    p, g = np.asarray(pred), np.asarray(gold)
    if p.ndim == 2 and g.ndim == 1 and p.shape[1] > 1:
        p = p.argmax(axis=1)
    p, g = p.reshape(-1), g.reshape(-1)
    if p.shape != g.shape:
        raise MeasureError(f"{p.shape[0]} predictions for {g.shape[0]} labels; they must match")
    if p.size == 0:
        raise MeasureError("no predictions to resample; pass at least one example")
    return p, g


# ------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------
def metric_interval(
    metric: str,
    predictions: Any,
    labels: Any,
    *,
    groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """A metric with its percentile bootstrap interval over examples (or over ``groups``).

    Args:
        metric: A name of :data:`tunescope.metrics.METRICS` (``accuracy``, ``f1``, ``mcc``, ...).
        predictions: Class ids or values ``(n_items,)`` (scores ``(n_items, n_classes)``: argmax).
        labels: ``(n_items,)``.
        groups: Optional unit id of each item ``(n_items,)`` (the sentence of each word): whole units
            are resampled.
        n_boot: Resamples, at least 100.
        level: Coverage in (0, 1).
        seed: Seed of the resampling; the same seed gives the same interval.

    Returns:
        :class:`Interval` whose ``value`` is the metric on all items.

    Example:
        >>> ci = metric_interval("accuracy", [1, 0, 1, 1] * 50, [1, 0, 0, 1] * 50, n_boot=200)
        >>> ci.value, ci.low < 0.75 < ci.high
        (0.75, True)
    """
    pred, gold = _checked(metric, predictions, labels, n_boot, level)
    units, n_units = _units(pred.size, groups)
    samples = _resampled(metric, pred, gold, units, n_units, _draws(n_units, n_boot, seed))
    low, high = _quantiles(samples, level)
    return Interval(compute_metric(metric, pred, gold), low, high, level, n_boot)


def difference_interval(
    metric: str,
    predictions_a: Any,
    predictions_b: Any,
    labels: Any,
    *,
    groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``metric(b) - metric(a)`` on the same examples, with a paired bootstrap interval.

    Each resample draws one set of examples (or units) and scores both models on it, so the
    examples' difficulty, which both models share, cancels out of the difference.

    Args:
        metric: A metric name.
        predictions_a: The reference model's predictions ``(n_items,)``.
        predictions_b: The other model's, aligned with ``predictions_a``.
        labels: ``(n_items,)``.
        groups, n_boot, level, seed: As in :func:`metric_interval`.

    Returns:
        :class:`Interval` of the difference (``value`` = on all items).

    Example:
        >>> same = difference_interval("accuracy", [1, 0, 1] * 40, [1, 0, 1] * 40, [1, 1, 1] * 40)
        >>> (same.value, same.low, same.high)
        (0.0, 0.0, 0.0)
    """
    pred_a, gold = _checked(metric, predictions_a, labels, n_boot, level)
    pred_b, _ = _checked(metric, predictions_b, labels, n_boot, level)
    units, n_units = _units(gold.size, groups)
    draws = _draws(n_units, n_boot, seed)
    samples = _resampled(metric, pred_b, gold, units, n_units, draws) - _resampled(
        metric, pred_a, gold, units, n_units, draws
    )
    low, high = _quantiles(samples, level)
    value = compute_metric(metric, pred_b, gold) - compute_metric(metric, pred_a, gold)
    return Interval(value, low, high, level, n_boot)


def mean_interval(
    values: Any, *, groups: Any = None, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """The mean of per-example values ``(n_items,)`` with its bootstrap interval (e.g. per-example loss).

    Example:
        >>> mean_interval([1.0] * 100).low
        1.0
    """
    check_interval_options(n_boot, level)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise MeasureError("mean_interval needs at least one finite value")
    units, n_units = _units(x.size, groups)
    ids = np.arange(x.size) if units is None else units
    sums = np.bincount(ids, weights=x, minlength=n_units)
    counts = np.bincount(ids, minlength=n_units).astype(np.float64)
    draws = _draws(n_units, n_boot, seed)
    samples = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = _quantiles(samples, level)
    return Interval(float(x.mean()), low, high, level, n_boot)


@dataclass(frozen=True)
class SeedSummary:
    """One number measured under several fine-tuning seeds.

    Attributes:
        mean: Mean over seeds.
        std: Sample standard deviation (``ddof=1``; NaN for one seed).
        low, high: Student-t interval of the mean, ``mean -/+ t_{(1+level)/2, n-1} std / sqrt(n)``
            (NaN for one seed).
        n: Seeds.
        level: Coverage.
    """

    mean: float
    std: float
    low: float
    high: float
    n: int
    level: float


def seed_summary(values: Sequence[float], *, level: float = 0.95) -> SeedSummary:
    """Mean, spread and t-interval of a number over seeds (the variance of fine-tuning itself).

    Example:
        >>> s = seed_summary([0.80, 0.82, 0.84])
        >>> round(s.mean, 3), round(s.std, 3), s.low < 0.82 < s.high
        (0.82, 0.02, True)
    """
    from scipy import stats

    if not 0 < level < 1:
        raise InputError(f"the confidence level must be strictly between 0 and 1, got {level!r}")
    x = np.asarray([v for v in values if not math.isnan(float(v))], dtype=np.float64)
    if x.size == 0:
        return SeedSummary(math.nan, math.nan, math.nan, math.nan, 0, level)
    mean = float(x.mean())
    if x.size == 1:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1, level)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * std / math.sqrt(x.size)
    return SeedSummary(mean, std, mean - half, mean + half, int(x.size), level)
