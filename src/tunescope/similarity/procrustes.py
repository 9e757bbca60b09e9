"""Orthogonal Procrustes distance between representations (Ding et al. 2021; Schoenemann 1966)."""

from __future__ import annotations

import torch
from torch import Tensor

from tunescope.similarity._validate import check_variance
from tunescope.similarity.cka import checked_pair

__all__ = ["procrustes"]


def normalized(x: Tensor, name: str) -> Tensor:
    """Column-centered, unit-Frobenius-norm float64 copy of ``x`` (n_examples, d)."""
    x64 = x.to(torch.float64)
    xc = x64 - x64.mean(dim=0)
    sq = xc.square().sum()
    check_variance(sq[None], x64.square().sum()[None], x.shape[0], [name], "procrustes")
    return xc / sq.sqrt()


def nuclear_cross(a: Tensor, b: Tensor) -> Tensor:
    """``||A^T B||_*`` for (n, d_a) and (n, d_b); through n x n triangular factors when n < d."""
    n, da, db = a.shape[0], a.shape[1], b.shape[1]
    if n < min(da, db):  # A^T = Q_a R_a, B^T = Q_b R_b  =>  ||A^T B||_* = ||R_a R_b^T||_*
        ra, rb = torch.linalg.qr(a.T).R, torch.linalg.qr(b.T).R
        return torch.linalg.svdvals(ra @ rb.T).sum()
    return torch.linalg.svdvals(a.T @ b).sum()


def procrustes(x: Tensor, y: Tensor) -> Tensor:
    """Orthogonal Procrustes distance: ``min_R ||A - B R||_F^2`` over orthogonal ``R``.

    ``A``, ``B`` are ``x``, ``y`` column-centered and scaled to unit Frobenius norm (the narrower one
    implicitly zero-padded), so ``d = ||A||^2 + ||B||^2 - 2 ||A^T B||_* = 2 - 2 ||A^T B||_*`` in
    [0, 2] (Ding et al. 2021, sec. 2). 0 means equal up to rotation, reflection, translation and
    scale. A distance, not a similarity; well defined for n < d.

    Args:
        x: (n_examples, d_x).
        y: (n_examples, d_y).

    Returns:
        0-dim float64 tensor in [0, 2].

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])
        >>> rotate = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> round(float(procrustes(x, 5 * x @ rotate + 3)), 12)
        0.0
    """
    x, y = checked_pair(x, y, min_n=2, what="procrustes")
    return procrustes_pair(normalized(x, "x"), normalized(y, "y"))


def procrustes_pair(a: Tensor, b: Tensor) -> Tensor:
    """Distance between two already `normalized` representations."""
    return (2.0 - 2.0 * nuclear_cross(a, b)).clamp(0.0, 2.0)
