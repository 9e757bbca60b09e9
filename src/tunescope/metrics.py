"""Task metrics (accuracy, F1, MCC, Pearson, Spearman): pure functions of predictions and labels.

Each metric is a thin wrapper over ``sklearn.metrics`` or ``scipy.stats`` in the :data:`METRICS`
registry, so the numbers are exactly the ones the GLUE papers report: accuracy (SST-2, MNLI, ...), F1
of the positive class (MRPC, QQP), Matthews correlation (CoLA) and, for STS-B, the mean of Pearson and
Spearman correlation (``pearson_spearman``, GLUE's convention for one STS-B number).

Running a task model over examples to get the predictions (tokenising, batching, predicting) and
:func:`~tunescope.inference.evaluate` live in :mod:`tunescope.inference`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunescope.errors import MeasureError, UnknownNameError

__all__ = ["METRICS", "compute_metric"]


# ------------------------------------------------------------------------------------------------
# metrics: (predictions, labels) -> float
# ------------------------------------------------------------------------------------------------
def _pair(predictions: Any, labels: Any, *, classes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check and flatten the two arrays; a 2-D array of class scores becomes its argmax."""
    pred = np.asarray(predictions)
    gold = np.asarray(labels)
    if classes and pred.ndim == 2 and gold.ndim == 1 and pred.shape[1] > 1:
        pred = pred.argmax(axis=1)
    pred, gold = pred.reshape(-1), gold.reshape(-1)
    if pred.shape != gold.shape:
        raise MeasureError(f"{pred.shape[0]} predictions for {gold.shape[0]} labels; they must match")
    if pred.size == 0:
        raise MeasureError("no predictions to score; pass at least one example")
    for name, array in (("predictions", pred), ("labels", gold)):
        if array.dtype.kind not in "iubf":
            raise MeasureError(f"{name} must be numbers, got dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise MeasureError(f"{name} contain NaN or infinity")
    return pred, gold


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to their label (``sklearn.metrics.accuracy_score``).

    Args:
        predictions: Class ids ``(n_examples,)`` or scores ``(n_examples, n_classes)`` (argmax taken).
        labels: Class ids ``(n_examples,)``.

    Example:
        >>> accuracy([0, 1, 1, 0], [0, 1, 0, 0])
        0.75
    """
    from sklearn.metrics import accuracy_score

    pred, gold = _pair(predictions, labels, classes=True)
    return float(accuracy_score(gold, pred))


def f1(predictions: Any, labels: Any) -> float:
    """F1 score: ``2 * precision * recall / (precision + recall)`` (``sklearn.metrics.f1_score``).

    Binary labels (all ids in ``{0, 1}``): F1 of class 1, as GLUE reports it for MRPC and QQP.
    More classes: the unweighted mean of the per-class F1 scores (``average="macro"``). A class
    that is never predicted and never true counts as F1 0 (sklearn's ``zero_division=0``).

    Args:
        predictions: Class ids ``(n_examples,)`` or scores ``(n_examples, n_classes)`` (argmax taken).
        labels: Class ids ``(n_examples,)``.

    Example:
        >>> round(f1([1, 1, 0, 0], [1, 0, 0, 1]), 3)  # precision 1/2, recall 1/2
        0.5
    """
    from sklearn.metrics import f1_score

    pred, gold = _pair(predictions, labels, classes=True)
    binary = set(np.unique(pred)).issubset({0, 1}) and set(np.unique(gold)).issubset({0, 1})
    average = "binary" if binary else "macro"
    return float(f1_score(gold, pred, average=average, zero_division=0))


def mcc(predictions: Any, labels: Any) -> float:
    """Matthews correlation coefficient (``sklearn.metrics.matthews_corrcoef``), CoLA's metric.

    Binary case: ``(tp * tn - fp * fn) / sqrt((tp + fp)(tp + fn)(tn + fp)(tn + fn))``; 0 when a
    factor of the denominator is 0 (e.g. one class predicted everywhere).

    Args:
        predictions: Class ids ``(n_examples,)`` or scores ``(n_examples, n_classes)`` (argmax taken).
        labels: Class ids ``(n_examples,)``.

    Example:
        >>> round(mcc([1, 1, 0, 0], [1, 0, 0, 0]), 4)  # (1*2 - 1*0) / sqrt(2*1*3*2)
        0.5774
    """
    from sklearn.metrics import matthews_corrcoef

    pred, gold = _pair(predictions, labels, classes=True)
    return float(matthews_corrcoef(gold, pred))


def _correlation(kind: str, predictions: Any, labels: Any) -> float:
    from scipy import stats

    pred, gold = _pair(predictions, labels, classes=False)
    if pred.size < 2:
        raise MeasureError(f"{kind} correlation needs at least 2 examples, got {pred.size}")
    if np.all(pred == pred[0]) or np.all(gold == gold[0]):
        return math.nan  # undefined: one side has no variance (a constant prediction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = stats.pearsonr if kind == "pearson" else stats.spearmanr
        value = test(pred.astype(np.float64), gold.astype(np.float64))[0]
    return float(value)


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation ``cov(p, y) / (std(p) std(y))`` (``scipy.stats.pearsonr``).

    NaN when either side is constant (the correlation is undefined), e.g. a regressor that has not
    learned anything yet.

    Args:
        predictions: Predicted values ``(n_examples,)``.
        labels: Targets ``(n_examples,)``.

    Example:
        >>> round(pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]), 4)  # 5 / sqrt(2 * 12.6667)
        0.9934
    """
    return _correlation("pearson", predictions, labels)


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (``scipy.stats.spearmanr``).

    NaN when either side is constant.

    Args:
        predictions: Predicted values ``(n_examples,)``.
        labels: Targets ``(n_examples,)``.

    Example:
        >>> spearman([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
        1.0
    """
    return _correlation("spearman", predictions, labels)


def pearson_spearman(predictions: Any, labels: Any) -> float:
    """Mean of Pearson and Spearman correlation: GLUE's single STS-B number.

    Example:
        >>> round(pearson_spearman([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]), 4)
        0.9967
    """
    return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


METRICS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "pearson_spearman": pearson_spearman,
}
"""Metric name -> ``fn(predictions, labels) -> float``; higher is better for every one of them."""

_CLASS_METRICS = frozenset({"accuracy", "f1", "mcc"})


def _metric(name: str) -> Callable[[Any, Any], float]:
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("metric", str(name), METRICS) from None


def compute_metric(name: str, predictions: Any, labels: Any) -> float:
    """Score predictions with the metric called ``name`` (a key of :data:`METRICS`).

    Args:
        name: ``accuracy``, ``f1``, ``mcc``, ``pearson``, ``spearman`` or ``pearson_spearman``.
        predictions: Class ids or values ``(n_examples,)``; for the class metrics also scores
            ``(n_examples, n_classes)``, reduced with argmax.
        labels: Class ids or targets ``(n_examples,)``.

    Returns:
        The metric as a Python float (NaN for a correlation with a constant side).

    Raises:
        UnknownNameError: ``name`` is not a metric (the message lists them).
        MeasureError: Lengths differ, nothing to score, or NaN in the inputs.

    Example:
        >>> compute_metric("accuracy", [[0.9, 0.1], [0.2, 0.8]], [0, 0])
        0.5
    """
    return _metric(name)(predictions, labels)


# ------------------------------------------------------------------------------------------------
# several metrics at once
# ------------------------------------------------------------------------------------------------
def score(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{name: value}`` for each metric, ``pearson``/``spearman`` added beside ``pearson_spearman``."""
    result: dict[str, float] = {}
    for name in names:
        if name == "pearson_spearman":
            result["pearson"] = pearson(predictions, labels)
            result["spearman"] = spearman(predictions, labels)
            result[name] = (result["pearson"] + result["spearman"]) / 2
        else:
            result[name] = compute_metric(name, predictions, labels)
    result["n"] = float(len(labels))
    return result
