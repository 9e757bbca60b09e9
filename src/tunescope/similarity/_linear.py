"""The engine behind every linear-CKA number: per-layer products computed once, HSIC for all pairs.

For column-centered ``X_a`` (n x d_a) and ``Y_b`` (n x d_b) with linear Gram matrices ``K = X_a X_a^T``
and ``L = Y_b Y_b^T`` (already double-centered), everything CKA needs is

* ``M_ab = <K, L>_F = ||X_a^T Y_b||_F^2``            (sample space: Gram inner products;
                                                     feature space: cross-covariance norms),
* ``t_a = tr K = ||X_a||_F^2``                      (debiased only),
* ``q_ab = sum_i ||x_ai||^2 ||y_bi||^2``            (debiased only: the Gram diagonals' inner product),

and then ``HSIC_0 = M / (n-1)^2`` and, because ``K`` has zero row sums,
``HSIC_1 = [M + t_a t_b / ((n-1)(n-2)) - n/(n-2) q_ab] / (n (n-3))`` (Song et al. 2012, eq. 5,
with ``1^T K~ 1 = -t`` and ``K~ 1 = -diag K``).

Products are computed in the input dtype (float32 or float64) on centered data and accumulated in
float64, in chunks of rows so that a float32 product never sums more than a few thousand terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity._validate import center, check_variance, compute_dtype

Space = Literal["auto", "sample", "feature"]

#: float64 bytes the sample-space path may hold for one chunk of Gram strips
SAMPLE_CHUNK_BYTES = 256 * 2**20
#: rows per float32 product in the feature-space path (bounds float32 summation error)
FEATURE_CHUNK_ROWS = 4096


@dataclass
class LinearParts:
    """Sufficient statistics of linear HSIC for all layer pairs (shapes: La, Lb = layer counts)."""

    n: int
    cross: Tensor  # (La, Lb) M_ab
    self_a: Tensor  # (La,) M_aa
    self_b: Tensor  # (Lb,) M_bb
    trace_a: Tensor  # (La,) t_a
    trace_b: Tensor  # (Lb,) t_b
    diag_cross: Tensor | None = None  # (La, Lb) q_ab, debiased only
    diag_self_a: Tensor | None = None  # (La,) q_aa
    diag_self_b: Tensor | None = None  # (Lb,) q_bb


def offsets(dims: Sequence[int]) -> list[int]:
    """Start column of each layer in the concatenation of all layers (length n_layers + 1)."""
    out = [0]
    for d in dims:
        out.append(out[-1] + d)
    return out


def segment_ids(dims: Sequence[int], device: torch.device) -> Tensor:
    """(sum(dims),) long tensor: the layer index of every concatenated feature."""
    return torch.repeat_interleave(
        torch.arange(len(dims), device=device), torch.tensor(list(dims), device=device)
    )


def block_sq_norms(c: Tensor, dims_a: Sequence[int], dims_b: Sequence[int], *, upper: bool) -> Tensor:
    """Squared Frobenius norm of every (d_a x d_b) block of ``c`` (D_A x D_B float64).

    With ``upper=True`` (within-model, ``c`` symmetric but only its upper block triangle filled) the
    lower blocks are taken from the upper ones.

    Returns:
        (La, Lb) float64.
    """
    off_a = offsets(dims_a)
    seg_b = segment_ids(dims_b, c.device)
    out = torch.zeros(len(dims_a), len(dims_b), dtype=torch.float64, device=c.device)
    for a in range(len(dims_a)):
        rows = c[off_a[a] : off_a[a + 1]]
        start = off_a[a] if upper else 0
        col_sq = rows[:, start:].square().sum(dim=0)
        out[a].index_add_(0, seg_b[start:], col_sq)
    if upper:
        out = out.triu() + out.triu(1).T
    return out


def add_cross_products(out: Tensor, xs_a: Sequence[Tensor], xs_b: Sequence[Tensor]) -> None:
    """``out (D_A x D_B, float64) += [X_a1 .. X_aLa]^T [Y_b1 .. Y_bLb]``, one product per chunk of rows."""
    cat_a, cat_b = torch.cat(list(xs_a), dim=1), torch.cat(list(xs_b), dim=1)
    for start in range(0, cat_a.shape[0], FEATURE_CHUNK_ROWS):
        rows = slice(start, start + FEATURE_CHUNK_ROWS)
        out.add_(cat_a[rows].T @ cat_b[rows])


def add_upper_cross_products(out: Tensor, xs: Sequence[Tensor]) -> None:
    """Within-model ``out (D x D) += X^T X`` for the upper block triangle only (about half the work)."""
    cat = torch.cat(list(xs), dim=1)
    off = offsets([x.shape[1] for x in xs])
    for start in range(0, cat.shape[0], FEATURE_CHUNK_ROWS):
        rows = slice(start, start + FEATURE_CHUNK_ROWS)
        for a, x in enumerate(xs):
            out[off[a] : off[a + 1], off[a] :].add_(x[rows].T @ cat[rows, off[a] :])


def add_self_products(outs: Sequence[Tensor], xs: Sequence[Tensor]) -> None:
    """``outs[l] (d_l x d_l, float64) += X_l^T X_l`` for every layer."""
    for out, x in zip(outs, xs, strict=True):
        for start in range(0, x.shape[0], FEATURE_CHUNK_ROWS):
            rows = x[start : start + FEATURE_CHUNK_ROWS]
            out.add_(rows.T @ rows)


def _feature_space(xs_a: list[Tensor], xs_b: list[Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    device = xs_a[0].device
    dims_a = [x.shape[1] for x in xs_a]
    if xs_b is None:
        c = torch.zeros(sum(dims_a), sum(dims_a), dtype=torch.float64, device=device)
        add_upper_cross_products(c, xs_a)
        cross = block_sq_norms(c, dims_a, dims_a, upper=True)
        return cross, cross.diagonal().clone(), cross.diagonal().clone()
    dims_b = [y.shape[1] for y in xs_b]
    c = torch.zeros(sum(dims_a), sum(dims_b), dtype=torch.float64, device=device)
    add_cross_products(c, xs_a, xs_b)
    cross = block_sq_norms(c, dims_a, dims_b, upper=False)
    del c
    selfs = []
    for xs in (xs_a, xs_b):
        blocks = [torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=device) for x in xs]
        add_self_products(blocks, xs)
        selfs.append(torch.stack([b.square().sum() for b in blocks]))
    return cross, selfs[0], selfs[1]


def _gram_strips(xs: list[Tensor], start: int, stop: int, buf: Tensor) -> Tensor:
    """Rows ``start:stop`` of every layer's Gram matrix from column ``start`` on, flattened, float64.

    The (stop-start) x (stop-start) diagonal block is scaled by sqrt(1/2): the strips then cover the
    upper block triangle of the symmetric Gram matrix, and ``2 <strip_a, strip_b>`` summed over strips
    equals ``<K_a, K_b>`` (off-diagonal blocks count twice, diagonal blocks once).
    """
    r, m = stop - start, xs[0].shape[0] - start
    out = buf[:, : r * m]
    for i, x in enumerate(xs):
        strip = out[i].view(r, m)
        strip.copy_(x[start:stop] @ x[start:].T)
        strip[:, :r].mul_(math.sqrt(0.5))
    return out


def _sample_space(xs_a: list[Tensor], xs_b: list[Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    n, device = xs_a[0].shape[0], xs_a[0].device
    n_layers = len(xs_a) + (len(xs_b) if xs_b is not None else 0)
    rows = max(1, min(n, SAMPLE_CHUNK_BYTES // (8 * n_layers * n)))
    buf_a = torch.empty(len(xs_a), rows * n, dtype=torch.float64, device=device)
    buf_b = None if xs_b is None else torch.empty(len(xs_b), rows * n, dtype=torch.float64, device=device)
    cross = torch.zeros(len(xs_a), len(xs_a if xs_b is None else xs_b), dtype=torch.float64, device=device)
    self_a = torch.zeros(len(xs_a), dtype=torch.float64, device=device)
    self_b = torch.zeros(cross.shape[1], dtype=torch.float64, device=device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        strips_a = _gram_strips(xs_a, start, stop, buf_a)
        if xs_b is None or buf_b is None:
            cross.add_(strips_a @ strips_a.T, alpha=2.0)
            continue
        strips_b = _gram_strips(xs_b, start, stop, buf_b)
        cross.add_(strips_a @ strips_b.T, alpha=2.0)
        self_a.add_(strips_a.square().sum(dim=1), alpha=2.0)
        self_b.add_(strips_b.square().sum(dim=1), alpha=2.0)
    if xs_b is None:
        cross = (cross + cross.T) / 2
        return cross, cross.diagonal().clone(), cross.diagonal().clone()
    return cross, self_a, self_b


def sample_space_cost(n: int, dims_a: Sequence[int], dims_b: Sequence[int] | None) -> float:
    """Multiply-adds of the sample-space path: Gram matrices plus their pairwise inner products."""
    if dims_b is None:
        return n * n * (sum(dims_a) + len(dims_a) ** 2) / 2
    return n * n * (sum(dims_a) + sum(dims_b) + len(dims_a) * len(dims_b)) / 2


def feature_space_cost(n: int, dims_a: Sequence[int], dims_b: Sequence[int] | None) -> float:
    """Multiply-adds of the feature-space path: cross-products between and within layers."""
    if dims_b is None:
        return n * (sum(dims_a) ** 2 + sum(d * d for d in dims_a)) / 2
    return n * (sum(dims_a) * sum(dims_b) + sum(d * d for d in dims_a) + sum(d * d for d in dims_b))


def choose_space(n: int, dims_a: Sequence[int], dims_b: Sequence[int] | None) -> Literal["sample", "feature"]:
    """The cheaper of the two exact paths (equal cost goes to feature space, which needs less memory)."""
    sample, feature = sample_space_cost(n, dims_a, dims_b), feature_space_cost(n, dims_a, dims_b)
    return "sample" if sample < feature else "feature"


def linear_parts(
    layers_a: list[Tensor],
    layers_b: list[Tensor] | None,
    *,
    debiased: bool,
    space: Space = "auto",
    what: str = "linear CKA",
    names: tuple[str, str] = ("x", "y"),
    check: bool = True,
) -> LinearParts:
    """Center every layer once, check its variance, and compute the `LinearParts` for all pairs.

    Args:
        layers_a: La checked (n, d_a) tensors.
        layers_b: Lb checked (n, d_b) tensors, or None for the within-model statistics of ``layers_a``.
        debiased: also compute the statistics of the unbiased estimator.
        space: "sample" (n x n Gram matrices), "feature" (d x d cross-products) or "auto" (cheaper).
        what: measure name for error messages.
        names: how to call the two sides in error messages.
        check: refuse zero-variance layers (minibatch CKA skips this per batch and checks the sums).
    """
    dtype = compute_dtype(*layers_a, *(layers_b or []))
    n = layers_a[0].shape[0]
    sides: list[tuple[list[Tensor], Tensor, Tensor | None]] = []
    for side, layers in enumerate((layers_a, layers_b)):
        if layers is None:
            continue
        centered = [center(x, dtype)[0] for x in layers]
        trace = torch.stack([x.to(torch.float64).square().sum() for x in centered])
        raw = torch.stack([x.to(torch.float64).square().sum() for x in layers])
        labels = [
            names[side] if len(layers) == 1 else f"layer {i} of {names[side]}" for i in range(len(layers))
        ]
        if check:
            check_variance(trace, raw, n, labels, what)
        rownorms = (
            torch.stack([x.to(torch.float64).square().sum(dim=1) for x in centered]) if debiased else None
        )
        sides.append((centered, trace, rownorms))
    xs_a, trace_a, norms_a = sides[0]
    xs_b, trace_b, norms_b = sides[1] if layers_b is not None else (None, trace_a, norms_a)
    dims_a = [x.shape[1] for x in xs_a]
    dims_b = None if xs_b is None else [x.shape[1] for x in xs_b]
    chosen = choose_space(n, dims_a, dims_b) if space == "auto" else space
    if chosen not in ("sample", "feature"):
        raise MeasureError(f"space must be 'auto', 'sample' or 'feature'; got {space!r}")
    engine = _sample_space if chosen == "sample" else _feature_space
    cross, self_a, self_b = engine(xs_a, xs_b)
    parts = LinearParts(n, cross, self_a, self_b, trace_a, trace_b)
    if debiased and norms_a is not None and norms_b is not None:
        parts.diag_cross = norms_a @ norms_b.T
        parts.diag_self_a = norms_a.square().sum(dim=1)
        parts.diag_self_b = norms_b.square().sum(dim=1)
    return parts


def hsic_from_parts(parts: LinearParts, *, debiased: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(HSIC(X_a, Y_b) (La, Lb), HSIC(X_a, X_a) (La,), HSIC(Y_b, Y_b) (Lb,))``, biased or unbiased."""
    n = parts.n
    if not debiased:
        scale = 1.0 / (n - 1) ** 2
        return parts.cross * scale, parts.self_a * scale, parts.self_b * scale
    if parts.diag_cross is None or parts.diag_self_a is None or parts.diag_self_b is None:
        raise ValueError("debiased HSIC needs the diagonal statistics")  # internal misuse, not user input

    def unbiased(m: Tensor, t1: Tensor, t2: Tensor, q: Tensor) -> Tensor:
        return (m + t1 * t2 / ((n - 1) * (n - 2)) - q * (n / (n - 2))) / (n * (n - 3))

    ta, tb = parts.trace_a, parts.trace_b
    return (
        unbiased(parts.cross, ta[:, None], tb[None, :], parts.diag_cross),
        unbiased(parts.self_a, ta, ta, parts.diag_self_a),
        unbiased(parts.self_b, tb, tb, parts.diag_self_b),
    )


def cka_from_hsic(
    h_ab: Tensor,
    h_aa: Tensor,
    h_bb: Tensor,
    *,
    what: str = "CKA",
    names: tuple[str, str] = ("x", "y"),
    bounded: bool = False,
) -> Tensor:
    """``h_ab / sqrt(h_aa h_bb)`` for every pair; refuses a non-positive self-HSIC instead of a NaN.

    ``bounded=True`` (biased HSIC, where Cauchy-Schwarz gives [0, 1]) clips float rounding such as
    1 + 4e-16 back into [0, 1].
    """
    for h, name in ((h_aa, names[0]), (h_bb, names[1])):
        bad = (h <= 0).nonzero().flatten().tolist()
        if bad:
            where = name if h.numel() == 1 else f"layers {bad} of {name}"
            raise MeasureError(
                f"{what} is undefined: HSIC of {where} with itself is {float(h[bad[0]]):.3g} <= 0 "
                "(zero variance, or too few examples for the unbiased estimator: use more examples "
                "or debiased=False)"
            )
    out = h_ab / torch.sqrt(h_aa[:, None] * h_bb[None, :])
    return out.clamp_(0.0, 1.0) if bounded else out
