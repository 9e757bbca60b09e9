"""Slow, obviously-correct float64 references for :mod:`tunescope.layerstats` (NumPy, explicit loops)."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["reference_layer_statistics"]


def reference_layer_statistics(x: np.ndarray) -> dict[str, float]:
    """The statistics of :func:`tunescope.layerstats.layer_statistics`, straight from their definitions."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    norms = np.array([np.sqrt(sum(v * v for v in row)) for row in x])
    cosines = [
        float(np.dot(x[i], x[j]) / (norms[i] * norms[j])) for i, j in itertools.permutations(range(n), 2)
    ]
    covariance = np.cov(x, rowvar=False, bias=True)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.atleast_2d(covariance)))[::-1]
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    return {
        "mean_norm": float(np.mean(norms)),
        "norm_std": float(np.sqrt(np.mean((norms - norms.mean()) ** 2))),
        "mean_cosine": float(np.mean(cosines)),
        "top_pc_fraction": float(eigenvalues[0] / eigenvalues.sum()),
        "participation_ratio": float(eigenvalues.sum() ** 2 / np.sum(eigenvalues**2)),
    }
