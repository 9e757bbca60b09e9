"""Centered kernel alignment (Kornblith et al. 2019): linear and RBF, biased or debiased.

``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``K``, ``L`` the Gram matrices of two
representations of the same examples. ``debiased=True`` uses the unbiased HSIC estimator of Song et al.
(2012), as recommended by Nguyen et al. (2021) ("debiased CKA"); it can be slightly negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity._linear import cka_from_hsic, hsic_from_parts, linear_parts
from tunescope.similarity._validate import as_matrix, check_examples, check_variance
from tunescope.similarity.kernels import center_gram, rbf_gram, u_center_gram

__all__ = ["linear_cka", "rbf_cka"]


def checked_pair(x: Tensor, y: Tensor, *, min_n: int, what: str) -> tuple[Tensor, Tensor]:
    """Validate a pair of (n_examples, d) representations of the same examples."""
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    check_examples(x.shape[0], y.shape[0], min_n, what)
    if x.device != y.device:
        raise MeasureError(f"{what}: x is on {x.device} and y on {y.device}; move them to one device")
    return x, y


def min_examples(debiased: bool) -> int:
    """Smallest n a (debiased) CKA estimate is defined for."""
    return 4 if debiased else 2


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> Tensor:
    """Linear CKA between two representations of the same examples.

    ``CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with ``X_c``, ``Y_c`` column-centered
    (Kornblith et al. 2019, eq. 5). Invariant to orthogonal transforms and isotropic scaling of either
    side, not to general invertible linear maps. Computed in sample or feature space, whichever is
    cheaper (see `cka_matrix`).

    Args:
        x: (n_examples, d_x).
        y: (n_examples, d_y), same examples in the same order.
        debiased: use the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021); needs n >= 4.

    Returns:
        0-dim float64 tensor on the inputs' device; in [0, 1] when ``debiased=False``.

    Raises:
        MeasureError: different n, n < 2 (n < 4 debiased), NaN/inf, 1-D input, zero variance.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
        >>> float(linear_cka(x, x**2))  # one feature each: the squared correlation, 125/129
        0.9689922480620154
    """
    x, y = checked_pair(x, y, min_n=min_examples(debiased), what="linear_cka")
    parts = linear_parts([x], [y], debiased=debiased, what="linear_cka")
    return cka_from_hsic(*hsic_from_parts(parts, debiased=debiased), what="linear_cka", bounded=not debiased)[
        0, 0
    ]


def gram_hsic_matrix(
    grams_a: Sequence[Tensor], grams_b: Sequence[Tensor] | None, *, debiased: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """HSIC between every pair of Gram matrices, each centered once.

    Args:
        grams_a: La (n, n) Gram matrices.
        grams_b: Lb (n, n) Gram matrices, or None for all pairs within ``grams_a``.
        debiased: unbiased estimator (U-centering) instead of the biased one (double centering).

    Returns:
        ``(HSIC_ab (La, Lb), HSIC_aa (La,), HSIC_bb (Lb,))`` in float64.
    """
    n = grams_a[0].shape[0]
    centering = u_center_gram if debiased else center_gram
    scale = 1.0 / (n * (n - 3)) if debiased else 1.0 / (n - 1) ** 2
    flat_a = torch.stack([centering(k.to(torch.float64)).flatten() for k in grams_a])
    self_a = flat_a.square().sum(dim=1) * scale
    if grams_b is None:
        cross = flat_a @ flat_a.T * scale
        return (cross + cross.T) / 2, self_a, self_a
    flat_b = torch.stack([centering(k.to(torch.float64)).flatten() for k in grams_b])
    return flat_a @ flat_b.T * scale, self_a, flat_b.square().sum(dim=1) * scale


def check_rbf_variance(layers: Sequence[Tensor], name: str, what: str) -> None:
    """Zero-variance check shared by the RBF paths (same rule as the linear ones)."""
    centered = torch.stack(
        [(x.to(torch.float64) - x.to(torch.float64).mean(0)).square().sum() for x in layers]
    )
    raw = torch.stack([x.to(torch.float64).square().sum() for x in layers])
    labels = [name if len(layers) == 1 else f"layer {i} of {name}" for i in range(len(layers))]
    check_variance(centered, raw, layers[0].shape[0], labels, what)


def rbf_cka(x: Tensor, y: Tensor, *, sigma: float = 0.8, debiased: bool = False) -> Tensor:
    """CKA with Gaussian kernels whose bandwidth is ``sigma`` times the median pairwise distance.

    ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2 m_x))`` with ``m_x`` the median squared distance between
    examples of ``x`` (Kornblith et al. 2019, sec. 4; their reference code's convention: median of the
    full n x n matrix, diagonal included), likewise for ``y``; then ``HSIC(K, L) / sqrt(HSIC(K, K)
    HSIC(L, L))``. Invariant to orthogonal transforms and isotropic scaling. Costs O(n^2 d) time and
    O(n^2) memory, in float64.

    Args:
        x: (n_examples, d_x).
        y: (n_examples, d_y).
        sigma: bandwidth as a fraction of the median distance (Kornblith et al. use 0.2 to 0.8).
        debiased: unbiased HSIC estimator; needs n >= 4.

    Returns:
        0-dim float64 tensor on the inputs' device.

    Raises:
        MeasureError: as `linear_cka`, and if the median distance is zero.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
        >>> round(float(rbf_cka(x, 3 * x)), 12)  # the bandwidth follows the scale
        1.0
    """
    x, y = checked_pair(x, y, min_n=min_examples(debiased), what="rbf_cka")
    check_rbf_variance([x], "x", "rbf_cka")
    check_rbf_variance([y], "y", "rbf_cka")
    h_ab, h_aa, h_bb = gram_hsic_matrix([rbf_gram(x, sigma)], [rbf_gram(y, sigma)], debiased=debiased)
    return cka_from_hsic(h_ab, h_aa, h_bb, what="rbf_cka", bounded=not debiased)[0, 0]
