"""CCA-based similarity: SVCCA (Raghu et al. 2017) and PWCCA (Morcos et al. 2018).

Canonical correlations between column-centered ``X`` and ``Y`` are the singular values of
``Q_x^T Q_y``, with ``Q_x`` an orthonormal basis of ``X``'s column space (from its SVD, in float64).

**Few examples.** After centering, n examples span at most n - 1 dimensions. If the two kept subspaces
have ``k_x + k_y > n - 1`` dimensions they must intersect, which forces canonical correlations of exactly
1 whatever the data: a meaningless number. Both functions refuse that case with a `MeasureError` that
says how many dimensions to keep (``n_components``) instead of returning it. With 768-d layers this
means: use well over 1536 examples, or reduce dimensions first (SVCCA always does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity._validate import check_variance
from tunescope.similarity.cka import checked_pair

__all__ = ["svcca", "pwcca"]


@dataclass
class Subspace:
    """A centered representation and an orthonormal basis of the part of it that is kept."""

    centered: Tensor  # (n, d) float64
    basis: Tensor  # (n, k) float64, orthonormal columns


def subspace(
    x: Tensor, *, n_components: int | None = None, variance: float | None = None, name: str = "x"
) -> Subspace:
    """Center ``x`` (float64) and keep the top singular directions.

    Args:
        x: (n_examples, d).
        n_components: keep exactly this many directions (at most the rank).
        variance: else keep the fewest directions explaining this fraction of the variance.
        name: used in error messages.

    With neither, every direction above numerical rank (``s > max(n, d) eps s_max``) is kept.
    """
    x64 = x.to(torch.float64)
    xc = x64 - x64.mean(dim=0)
    n = x.shape[0]
    check_variance(xc.square().sum()[None], x64.square().sum()[None], n, [name], "CCA")
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    rank = int((s > max(xc.shape) * torch.finfo(torch.float64).eps * s[0]).sum())
    if n_components is not None:
        if n_components < 1:
            raise MeasureError(f"n_components must be >= 1; got {n_components}")
        k = min(n_components, rank)
    elif variance is not None:
        if not 0 < variance <= 1:
            raise MeasureError(f"variance must be in (0, 1]; got {variance}")
        explained = torch.cumsum(s[:rank].square(), 0) / s[:rank].square().sum()
        k = min(rank, int((explained < variance - 1e-12).sum()) + 1)
    else:
        k = rank
    return Subspace(xc, u[:, :k])


def check_dimensions(kx: int, ky: int, n: int, what: str) -> None:
    """Refuse kept subspaces that must intersect (``k_x + k_y > n - 1``)."""
    if kx + ky > n - 1:
        raise MeasureError(
            f"{what}: kept {kx} + {ky} = {kx + ky} dimensions, but {n} centered examples span only {n - 1}, "
            f"which forces canonical correlations of 1; pass n_components <= {max(1, (n - 1) // 2)} "
            "or use more examples"
        )


def canonical(sx: Subspace, sy: Subspace) -> tuple[Tensor, Tensor, Tensor]:
    """Canonical correlations (k,) descending, and the (n, k) canonical variates on each side."""
    u, rho, vh = torch.linalg.svd(sx.basis.T @ sy.basis, full_matrices=False)
    k = rho.shape[0]
    return rho.clamp(0.0, 1.0), sx.basis @ u[:, :k], sy.basis @ vh[:k].T


def svcca_pair(sx: Subspace, sy: Subspace) -> Tensor:
    check_dimensions(sx.basis.shape[1], sy.basis.shape[1], sx.centered.shape[0], "svcca")
    return canonical(sx, sy)[0].mean()


def pwcca_pair(sx: Subspace, sy: Subspace) -> Tensor:
    check_dimensions(sx.basis.shape[1], sy.basis.shape[1], sx.centered.shape[0], "pwcca")
    rho, hx, hy = canonical(sx, sy)
    use_x = sx.centered.shape[1] <= sy.centered.shape[1]
    h, neurons = (hx, sx.centered) if use_x else (hy, sy.centered)
    weights = (h.T @ neurons).abs().sum(dim=1)
    return (weights / weights.sum() * rho).sum()


def svcca(x: Tensor, y: Tensor, *, variance: float = 0.99, n_components: int | None = None) -> Tensor:
    """SVCCA: mean canonical correlation between the top singular subspaces (Raghu et al. 2017).

    Each side is centered and reduced by SVD to the fewest directions explaining ``variance`` of its
    variance (or to ``n_components``); the result is the mean of the ``min(k_x, k_y)`` canonical
    correlations between the reduced representations.

    Args:
        x: (n_examples, d_x).
        y: (n_examples, d_y).
        variance: fraction of variance the kept directions must explain (ignored with n_components).
        n_components: keep exactly this many directions per side.

    Returns:
        0-dim float64 tensor in [0, 1].

    Raises:
        MeasureError: the usual input errors, and ``k_x + k_y > n - 1`` (see the module docstring).

    Example:
        >>> import torch
        >>> x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
        >>> a = torch.tensor([[2.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 3, 1], [1, 0, 0, 1]])
        >>> round(float(svcca(x, x @ a, variance=1.0)), 6)  # invertible map: all correlations 1
        1.0
    """
    x, y = checked_pair(x, y, min_n=2, what="svcca")
    sx = subspace(x, n_components=n_components, variance=variance, name="x")
    sy = subspace(y, n_components=n_components, variance=variance, name="y")
    return svcca_pair(sx, sy)


def pwcca(x: Tensor, y: Tensor, *, n_components: int | None = None) -> Tensor:
    """PWCCA: canonical correlations weighted by how much of the representation they account for.

    ``PWCCA = sum_i a_i rho_i`` with ``a_i ∝ sum_j |<h_i, x_j>|`` (Morcos et al. 2018, eq. 1): ``h_i`` the
    unit-norm canonical variates and ``x_j`` the centered neurons (columns) of the side with fewer
    neurons (``x`` on a tie), as in the authors' code. Asymmetric in general.

    Args:
        x: (n_examples, d_x).
        y: (n_examples, d_y).
        n_components: first reduce each side to its top singular directions (the weights still use the
            original neurons); needed when ``rank x + rank y > n - 1``.

    Returns:
        0-dim float64 tensor in [0, 1].

    Example:
        >>> import torch
        >>> x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
        >>> round(float(pwcca(x, -2 * x)), 6)
        1.0
    """
    x, y = checked_pair(x, y, min_n=2, what="pwcca")
    return pwcca_pair(
        subspace(x, n_components=n_components, name="x"), subspace(y, n_components=n_components, name="y")
    )
