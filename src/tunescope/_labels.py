"""Label arrays checked against the representations they label (shared by probing and variability)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from tunescope.errors import DataError

__all__ = ["row_labels"]


def row_labels(labels: Tensor | np.ndarray | Sequence[Any] | None, n_rows: int, what: str) -> np.ndarray:
    """``labels`` as a 1-D numpy array with exactly one entry per row, or one clear DataError."""
    if labels is None:
        raise DataError(f"{what}: no labels given, and the representations carry none")
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DataError(f"{what}: labels must be one label per row (1-D); got shape {array.shape}")
    if len(array) != n_rows:
        raise DataError(
            f"{what}: {len(array)} labels for {n_rows} rows of representations; give exactly one label "
            "per row (one per word for token-level representations: word labels aligned with words)"
        )
    return array
