"""Slow, obviously-correct references for `tunescope.variability` and `tunescope.probing`.

Independent of those modules on purpose (it imports neither): the variability ratio is written from
Xie et al.'s formula with explicit loops over classes and ``numpy.linalg.pinv``; the probe reference is
scikit-learn's ``LogisticRegression`` fitted layer by layer and strength by strength; the control-label
helpers state the properties Hewitt & Liang's control task must have. Inputs are anything
``numpy.asarray`` accepts (tensors included).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "variability_reference",
    "label_distribution",
    "consistent_per_group",
    "sklearn_probes",
    "sklearn_score",
]

Array = NDArray[np.float64]


def _f64(x: Any) -> Array:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _labels(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels)


def variability_reference(x: Any, labels: Any, *, rtol: float = 1e-10) -> float:
    """Xie et al. (2022), eq. 3: ``Tr(Sigma_W Sigma_B^+) / C``, class by class in float64.

    ``Sigma_W = (1/C) sum_c (1/n_c) sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T``,
    ``Sigma_B = (1/C) sum_c (mu_c - mu)(mu_c - mu)^T`` with ``mu`` the mean of the class means, and
    ``^+`` ``numpy.linalg.pinv`` (singular values below ``rtol`` times the largest dropped).
    """
    h = _f64(x)
    y = _labels(labels)
    classes = sorted(set(y.tolist()), key=repr)
    n_classes = len(classes)
    d = h.shape[1]
    means = []
    sigma_w = np.zeros((d, d))
    for c in classes:
        members = h[[i for i in range(len(y)) if y[i] == c]]
        mu_c = members.sum(axis=0) / len(members)
        scatter = np.zeros((d, d))
        for row in members:
            scatter += np.outer(row - mu_c, row - mu_c)
        sigma_w += scatter / len(members)
        means.append(mu_c)
    sigma_w /= n_classes
    mu = sum(means) / n_classes
    sigma_b = np.zeros((d, d))
    for mu_c in means:
        sigma_b += np.outer(mu_c - mu, mu_c - mu)
    sigma_b /= n_classes
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=rtol, hermitian=True))) / n_classes


def label_distribution(labels: Any) -> dict[Hashable, float]:
    """Label -> share of rows."""
    y = _labels(labels).tolist()
    counts = Counter(y)
    return {label: count / len(y) for label, count in sorted(counts.items(), key=lambda kv: repr(kv[0]))}


def consistent_per_group(control: Any, groups: Sequence[Hashable]) -> bool:
    """True when every group (word type) has one control label on all its rows."""
    seen: dict[Hashable, Any] = {}
    for label, group in zip(_labels(control).tolist(), groups, strict=True):
        if seen.setdefault(group, label) != label:
            return False
    return True


def sklearn_probes(
    train: Mapping[int, Any],
    y_train: Any,
    validation: Mapping[int, Any],
    y_validation: Any,
    *,
    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    max_iter: int = 100,
    tol: float = 1e-4,
    standardize: bool = True,
    dtype: Any = np.float64,
) -> dict[int, dict[str, Any]]:
    """scikit-learn probes, one ``LogisticRegression(C = 1 / (l2 * n))`` per layer and strength.

    Features are standardised with the training mean and (population) standard deviation, as
    ``tunescope.probing.LayerProbes`` does; each layer keeps the strength with the best validation
    accuracy (ties to the larger ``l2``).

    Returns:
        layer -> ``{"l2": chosen strength, "validation_accuracy": {l2: accuracy}, "model": the fitted
        LogisticRegression, "mean": (d,), "std": (d,)}``; :func:`sklearn_score` applies it.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y = _labels(y_train)
    y_val = _labels(y_validation)
    n = len(y)
    out: dict[int, dict[str, Any]] = {}
    for layer in sorted(train):
        x = _f64(train[layer])
        mean = x.mean(axis=0) if standardize else np.zeros(x.shape[1])
        std = x.std(axis=0) if standardize else np.ones(x.shape[1])
        std[std == 0] = 1.0
        z = ((x - mean) / std).astype(dtype)
        z_val = ((_f64(validation[layer]) - mean) / std).astype(dtype)
        best: tuple[float, float, Any] | None = None
        accuracy = {}
        for l2 in sorted(l2_grid, reverse=True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=1.0 / (l2 * n), max_iter=max_iter, tol=tol).fit(z, y)
            accuracy[l2] = float(np.mean(model.predict(z_val) == y_val))
            if best is None or accuracy[l2] > best[0]:
                best = (accuracy[l2], l2, model)
        assert best is not None
        out[layer] = {
            "l2": best[1],
            "validation_accuracy": accuracy,
            "model": best[2],
            "mean": mean,
            "std": std,
        }
    return out


def sklearn_score(
    probes: Mapping[int, Mapping[str, Any]], reps: Mapping[int, Any], labels: Any
) -> dict[int, float]:
    """Layer -> accuracy of :func:`sklearn_probes`' chosen models on ``reps``."""
    y = _labels(labels)
    return {
        layer: float(np.mean(p["model"].predict((_f64(reps[layer]) - p["mean"]) / p["std"]) == y))
        for layer, p in probes.items()
    }
