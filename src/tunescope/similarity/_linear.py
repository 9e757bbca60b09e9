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

Centering subtracts the column means in the input dtype, in two passes (exact where the mean is large,
see `tunescope.similarity._validate.center`). The big products (Gram strips, cross-products) run in the input
dtype (float32 or float64); everything they feed is summed in float64: Gram inner products are float64
products of small converted blocks, cross-products are accumulated in float64 over chunks of at most
``FEATURE_CHUNK_ROWS`` rows. Float32 inputs then agree with a float64 computation on the same values to
about 2e-9 in sample space and 3e-7 in feature space (tested: 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity._validate import center, check_variance, compute_dtype

Space = Literal["auto", "sample", "feature"]

#: bytes the sample-space path may hold for one chunk of Gram strips
SAMPLE_CHUNK_BYTES = 256 * 2**20
#: rows per chunk of Gram strips (512 keeps the products near peak speed and about 55% of a full Gram)
SAMPLE_CHUNK_ROWS = 512
#: Gram entries per layer converted to float64 at a time for the inner products
INNER_CHUNK = 16384
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
    raw_a: Tensor | None = None  # (La,) ||X_a||_F^2 before centering (zero-variance checks)
    raw_b: Tensor | None = None  # (Lb,)
    diag_cross: Tensor | None = None  # (La, Lb) q_ab, debiased only
    diag_self_a: Tensor | None = None  # (La,) q_aa
    diag_self_b: Tensor | None = None  # (Lb,) q_bb


@dataclass
class Side:
    """One model's layers, centered once: what both engines start from."""

    layers: list[Tensor]  # L centered (n, d_l) tensors in the compute dtype
    trace: Tensor  # (L,) float64 ||X_l - mean||_F^2
    raw: Tensor  # (L,) float64 ||X_l||_F^2
    rownorms: Tensor | None  # (L, n) float64 squared norms of the centered rows (debiased only)


def center_side(layers: Sequence[Tensor], dtype: torch.dtype, *, rownorms: bool) -> Side:
    """Center every layer once (see `center`) and take the sums of squares CKA needs, in float64.

    Layer by layer, so temporaries stay small (large fresh allocations cost page faults every batch).
    """
    n = layers[0].shape[0]
    centered, norms, means, row_norms = [], [], [], []
    for x in layers:
        xc, mean = center(x, dtype)
        centered.append(xc)
        means.append(mean.square().sum())
        norms.append(torch.linalg.vector_norm(xc))
        if rownorms:
            row_norms.append(torch.linalg.vector_norm(xc, dim=1))
    trace = torch.stack(norms).to(torch.float64).square()
    raw = trace + n * torch.stack(means).to(torch.float64)
    rows = torch.stack(row_norms).to(torch.float64).square() if rownorms else None
    return Side(centered, trace, raw, rows)


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


def _feature_space(side_a: Side, side_b: Side | None) -> tuple[Tensor, Tensor, Tensor]:
    xs_a, xs_b = side_a.layers, None if side_b is None else side_b.layers
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


def _gram_strips(side: Side, start: int, stop: int, out: Tensor) -> None:
    """Write rows ``start:stop`` of every layer's Gram matrix, columns ``start:``, into ``out``
    ((L, stop-start, n-start), compute dtype).

    The strips cover the upper block triangle of each symmetric Gram matrix: ``<K_a, K_b>`` is twice
    the sum of the strips' inner products minus the inner products of their square diagonal blocks
    (which lie on both sides of the diagonal only once).
    """
    for i, x in enumerate(side.layers):
        torch.mm(x[start:stop], x[start:].T, out=out[i])


def _sample_space(side_a: Side, side_b: Side | None) -> tuple[Tensor, Tensor, Tensor]:
    """Gram strips of both sides in one buffer (compute dtype); products of the buffer with itself give
    the cross and the self terms together, in float64, `INNER_CHUNK` entries at a time (a small block
    converted in cache, so the float64 products cost little memory traffic)."""
    x0 = side_a.layers[0]
    n, device, dtype = x0.shape[0], x0.device, x0.dtype
    la = len(side_a.layers)
    total = la + (0 if side_b is None else len(side_b.layers))
    rows = max(1, min(n, SAMPLE_CHUNK_ROWS, SAMPLE_CHUNK_BYTES // (x0.element_size() * total * n)))
    buf = torch.empty(total * rows * n, dtype=dtype, device=device)
    gram = torch.zeros(total, total, dtype=torch.float64, device=device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        r, m = stop - start, n - start
        strips = buf[: total * r * m].view(total, r, m)
        _gram_strips(side_a, start, stop, strips[:la])
        if side_b is not None:
            _gram_strips(side_b, start, stop, strips[la:])
        step = max(1, INNER_CHUNK // m)
        for row in range(0, r, step):
            block = strips[:, row : row + step].reshape(total, -1).to(torch.float64)
            if r == m:  # the last strip is all diagonal block: count it once
                gram.addmm_(block, block.T)
                continue
            diagonal_block = strips[:, row : row + step, :r].reshape(total, -1).to(torch.float64)
            gram.addmm_(block, block.T, alpha=2.0).addmm_(diagonal_block, diagonal_block.T, alpha=-1.0)
    gram = (gram + gram.T) / 2
    diag = gram.diagonal()
    if side_b is None:
        return gram, diag.clone(), diag.clone()
    return gram[:la, la:].clone(), diag[:la].clone(), diag[la:].clone()


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
    sides = []
    for index, layers in enumerate((layers_a, layers_b)):
        if layers is None:
            continue
        side = center_side(layers, dtype, rownorms=debiased)
        if check:
            labels = [
                names[index] if len(layers) == 1 else f"layer {i} of {names[index]}"
                for i in range(len(layers))
            ]
            check_variance(side.trace, side.raw, n, labels, what)
        sides.append(side)
    side_a, side_b = sides[0], (sides[1] if layers_b is not None else None)
    dims_a = [x.shape[1] for x in layers_a]
    dims_b = None if layers_b is None else [y.shape[1] for y in layers_b]
    chosen = choose_space(n, dims_a, dims_b) if space == "auto" else space
    if chosen not in ("sample", "feature"):
        raise MeasureError(f"space must be 'auto', 'sample' or 'feature'; got {space!r}")
    engine = _sample_space if chosen == "sample" else _feature_space
    cross, self_a, self_b = engine(side_a, side_b)
    other = side_a if side_b is None else side_b
    parts = LinearParts(n, cross, self_a, self_b, side_a.trace, other.trace, side_a.raw, other.raw)
    if debiased and side_a.rownorms is not None and other.rownorms is not None:
        parts.diag_cross = side_a.rownorms @ other.rownorms.T
        parts.diag_self_a = side_a.rownorms.square().sum(dim=1)
        parts.diag_self_b = other.rownorms.square().sum(dim=1)
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
