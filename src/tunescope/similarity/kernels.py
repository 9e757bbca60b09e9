"""Gram matrices, their centering, and the HSIC estimators every CKA variant is built from.

Notation: ``K`` and ``L`` are (n_examples, n_examples) Gram matrices, ``H = I - 11^T / n`` the centering
matrix, ``K~`` is ``K`` with its diagonal set to zero.

* Biased HSIC (Gretton et al. 2005): ``HSIC_0(K, L) = tr(K H L H) / (n - 1)^2``.
* Unbiased HSIC (Song et al. 2012, eq. 5)::

      HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2)) - 2/(n - 2) 1^T K~ L~ 1]
                     / (n (n - 3))

  computed as ``<U(K), U(L)>_F / (n (n - 3))`` with ``U`` the U-centering of Szekely & Rizzo (2014),
  which is the same number and makes all-pairs computations one matrix product.

CKA (Kornblith et al. 2019) is ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``; with ``HSIC_1`` it is the
debiased CKA of Nguyen et al. (2021).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunescope.errors import MeasureError

__all__ = ["linear_gram", "rbf_gram", "center_gram", "u_center_gram", "hsic"]


def linear_gram(x: Tensor) -> Tensor:
    """Linear kernel ``K = X X^T`` in float64.

    Args:
        x: (n_examples, d).

    Returns:
        (n_examples, n_examples) float64.

    Example:
        >>> import torch
        >>> linear_gram(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([[1., 0.],
                [0., 4.]], dtype=torch.float64)
    """
    x64 = x.to(torch.float64)
    return x64 @ x64.T


def _median(values: Tensor) -> Tensor:
    """Median with NumPy's convention (mean of the two middle values for an even count)."""
    flat = values.flatten()
    m = flat.numel()
    upper = flat.kthvalue(m // 2 + 1).values
    if m % 2:
        return upper
    return (flat.kthvalue(m // 2).values + upper) / 2


def rbf_gram(x: Tensor, sigma: float = 0.8) -> Tensor:
    """Gaussian (RBF) kernel with a bandwidth proportional to the median distance, in float64.

    ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2 m))`` where ``m`` is the median of the n x n squared
    distance matrix (diagonal zeros included), exactly as in the reference code of Kornblith et al.
    (2019): the bandwidth is ``sigma`` times the median pairwise distance.

    Args:
        x: (n_examples, d).
        sigma: bandwidth as a fraction of the median distance; > 0.

    Returns:
        (n_examples, n_examples) float64.

    Raises:
        MeasureError: if ``sigma <= 0`` or the median distance is zero (most examples identical).

    Example:
        >>> import torch
        >>> k = rbf_gram(torch.tensor([[0.0], [1.0], [3.0]]), sigma=1.0)
        >>> round(float(k[0, 1]), 4)  # median squared distance is 1
        0.6065
    """
    if not sigma > 0:
        raise MeasureError(f"sigma must be > 0; got {sigma}")
    x64 = x.to(torch.float64)
    x64 = x64 - x64.mean(dim=0)  # distances do not change; avoids cancellation in |a|^2 + |b|^2 - 2ab
    dots = x64 @ x64.T
    sq_norms = dots.diagonal()
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * dots).clamp_min_(0.0)
    sq_dist.fill_diagonal_(0.0)
    median = _median(sq_dist)
    if not median > 0:
        raise MeasureError(
            "rbf kernel: the median pairwise distance is zero (more than half of the example pairs are "
            "identical), so the bandwidth is undefined; remove duplicate examples"
        )
    return torch.exp(sq_dist / (-2.0 * sigma**2 * median))


def center_gram(k: Tensor) -> Tensor:
    """Double centering ``H K H``: subtract row and column means, add back the grand mean.

    Args:
        k: (..., n, n) symmetric.

    Returns:
        (..., n, n), same dtype.

    Example:
        >>> import torch
        >>> center_gram(torch.ones(3, 3, dtype=torch.float64)).abs().max().item()
        0.0
    """
    row = k.mean(dim=-1, keepdim=True)
    col = k.mean(dim=-2, keepdim=True)
    grand = k.mean(dim=(-2, -1), keepdim=True)
    return k - row - col + grand


def u_center_gram(k: Tensor) -> Tensor:
    """U-centering (Szekely & Rizzo 2014) used by the unbiased HSIC estimator.

    ``U(K)_ij = K~_ij - r_i/(n-2) - r_j/(n-2) + T/((n-1)(n-2))`` for ``i != j`` and ``0`` on the diagonal,
    where ``K~`` is ``K`` with a zero diagonal, ``r`` its row sums and ``T`` its total.

    Args:
        k: (..., n, n) symmetric, n >= 4.

    Returns:
        (..., n, n), same dtype, zero diagonal.

    Example:
        >>> import torch
        >>> u = u_center_gram(torch.ones(4, 4, dtype=torch.float64))
        >>> u.abs().max().item()
        0.0
    """
    n = k.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    kt = k.masked_fill(eye, 0.0)
    rows = kt.sum(dim=-1, keepdim=True) / (n - 2)
    total = kt.sum(dim=(-2, -1), keepdim=True) / ((n - 1) * (n - 2))
    out = kt - rows - rows.transpose(-2, -1) + total
    return out.masked_fill_(eye, 0.0)


def hsic(k: Tensor, l: Tensor, *, debiased: bool = False) -> Tensor:  # noqa: E741 (L is the paper's name)
    """HSIC between two Gram matrices, biased ``HSIC_0`` or unbiased ``HSIC_1`` (see the module docstring).

    Args:
        k: (n, n) Gram matrix of the first representation.
        l: (n, n) Gram matrix of the second representation.
        debiased: use the unbiased estimator of Song et al. (2012); needs n >= 4.

    Returns:
        0-dim float64 tensor.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
        >>> float(hsic(linear_gram(x), linear_gram(x)))  # (sum of squared deviations / (n - 1))^2
        2.7777777777777777
    """
    n = k.shape[-1]
    k64, l64 = k.to(torch.float64), l.to(torch.float64)
    if debiased:
        if n < 4:
            raise MeasureError(f"the unbiased HSIC estimator needs at least 4 examples; got {n}")
        return (u_center_gram(k64) * u_center_gram(l64)).sum() / (n * (n - 3))
    return (center_gram(k64) * center_gram(l64)).sum() / (n - 1) ** 2
