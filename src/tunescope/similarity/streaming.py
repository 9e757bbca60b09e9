"""Exact linear CKA for all layer pairs from sums accumulated batch by batch (O(d^2) memory).

Linear HSIC depends on the data only through sums over examples (see `tunescope.similarity._linear`):
``n``, ``s = sum_i x_i``, the cross-products ``C = sum_i x_i y_i^T`` and, for the debiased estimator,
``P = sum_i ||x_i||^2``, ``Q = sum_i ||x_i||^2 ||y_i||^2``, ``R = sum_i ||x_i||^2 y_i``. Sums of
independent batches add up, so the accumulator is exact and mergeable.

To keep float32 products accurate, every sum is taken over *shifted* values ``x - c``, with ``c`` the
mean of the first batch (a raw ``sum x y^T`` minus ``n mean mean^T`` cancels catastrophically when the
mean is large, as it is in transformer activations). Moving the sums from one shift to another is exact
algebra (`_PairSums.reshifted`); `StreamingCKA.compute` moves them to the data mean, which centers them,
and `StreamingCKA.merge` moves the other accumulator to this one's shift before adding.

Batches are processed in chunks of `STREAM_CHUNK_ROWS` rows: each chunk's sums and products are taken
in the batch dtype and added to float64 totals. The shift is the first batch's mean rounded to float32,
so subtracting it is exact where the mean is large (Sterbenz) and the stored shift is the one used.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity._linear import (
    LinearParts,
    add_cross_products,
    add_upper_cross_products,
    block_sq_norms,
    cka_from_hsic,
    hsic_from_parts,
    offsets,
    segment_ids,
)
from tunescope.similarity._validate import Layers, as_layers, check_variance, compute_dtype

__all__ = ["StreamingCKA"]


#: rows processed at a time inside `StreamingCKA.update` (bounds temporaries, whatever the batch size)
STREAM_CHUNK_ROWS = 2048


def _shift(layers: Sequence[Tensor]) -> Tensor:
    """(D,) float64 shift: the first batch's means, rounded to float32 so that subtracting it in
    float32 or float64 subtracts exactly the stored value."""
    return torch.cat([x.to(torch.float64).mean(dim=0) for x in layers]).to(torch.float32).to(torch.float64)


def _add_weighted_sums(out: Tensor, weights: Tensor, layers: Sequence[Tensor]) -> None:
    """``out (L_w, D) += weights^T [Y_1 .. Y_L]`` (weights (rows, L_w)), one layer block at a time."""
    start = 0
    for y in layers:
        out[:, start : start + y.shape[1]] += weights.T @ y
        start += y.shape[1]


def _indicator(dims: Sequence[int], values: Tensor) -> Tensor:
    """(n_layers, D): row ``l`` holds ``values`` on layer ``l``'s features and zeros elsewhere."""
    seg = segment_ids(dims, values.device)
    out = torch.zeros(len(dims), values.shape[0], dtype=values.dtype, device=values.device)
    out[seg, torch.arange(values.shape[0], device=values.device)] = values
    return out


def _mirror_upper(c: Tensor, dims: Sequence[int]) -> Tensor:
    """Full symmetric matrix from one whose upper block triangle is filled (the input is not changed)."""
    full = c.clone()
    off = offsets(dims)
    for a in range(1, len(dims)):
        full[off[a] : off[a + 1], : off[a]] = c[: off[a], off[a] : off[a + 1]].T
    return full


def _keep_upper(c: Tensor, dims: Sequence[int]) -> Tensor:
    off = offsets(dims)
    for a in range(1, len(dims)):
        c[off[a] : off[a + 1], : off[a]] = 0.0
    return c


@dataclass
class _PairSums:
    """Sums over shifted examples for all pairs of x layers (dims_x) and y layers (dims_y).

    ``symmetric`` means y is x (within-model): then ``c`` holds only its upper block triangle and the y
    fields are the x fields. Shapes: Dx, Dy total feature counts, Lx, Ly layer counts.
    """

    dims_x: list[int]
    dims_y: list[int]
    symmetric: bool
    debiased: bool
    device: torch.device
    n: int = 0
    s_x: Tensor = field(init=False)  # (Dx,)
    s_y: Tensor = field(init=False)  # (Dy,)
    p_x: Tensor = field(init=False)  # (Lx,) sum ||x_l||^2
    p_y: Tensor = field(init=False)  # (Ly,)
    c: Tensor = field(init=False)  # (Dx, Dy) sum x y^T
    q: Tensor = field(init=False)  # (Lx, Ly) sum ||x_a||^2 ||y_b||^2
    r_xy: Tensor = field(init=False)  # (Lx, Dy) sum ||x_a||^2 y
    r_yx: Tensor = field(init=False)  # (Ly, Dx) sum ||y_b||^2 x

    def __post_init__(self) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=self.device)

        dx, dy, lx, ly = sum(self.dims_x), sum(self.dims_y), len(self.dims_x), len(self.dims_y)
        self.s_x, self.p_x, self.c = zeros(dx), zeros(lx), zeros(dx, dy)
        self.s_y, self.p_y = (self.s_x, self.p_x) if self.symmetric else (zeros(dy), zeros(ly))
        lq = (lx, ly) if self.debiased else (0, 0)
        self.q, self.r_xy = zeros(*lq), zeros(lq[0], dy if self.debiased else 0)
        self.r_yx = self.r_xy if self.symmetric else zeros(lq[1], dx if self.debiased else 0)

    def add(self, xs: Sequence[Tensor], ys: Sequence[Tensor] | None) -> None:
        """Add one chunk of examples: ``xs`` per-layer shifted values (compute dtype), ``ys`` likewise,
        or None when symmetric. Every sum is taken in the compute dtype over the chunk's rows and
        added to the float64 totals."""
        self.n += xs[0].shape[0]
        self.s_x += torch.cat([x.sum(dim=0) for x in xs])
        px = torch.stack([torch.linalg.vector_norm(x, dim=1) for x in xs], dim=1).square_()  # (rows, Lx)
        self.p_x += px.sum(dim=0)
        if ys is None:
            add_upper_cross_products(self.c, xs)
            if self.debiased:
                self.q += px.T @ px
                _add_weighted_sums(self.r_xy, px, xs)
            return
        self.s_y += torch.cat([y.sum(dim=0) for y in ys])
        py = torch.stack([torch.linalg.vector_norm(y, dim=1) for y in ys], dim=1).square_()
        self.p_y += py.sum(dim=0)
        add_cross_products(self.c, xs, ys)
        if self.debiased:
            self.q += px.T @ py
            _add_weighted_sums(self.r_xy, px, ys)
            _add_weighted_sums(self.r_yx, py, xs)

    def full_c(self) -> Tensor:
        return _mirror_upper(self.c, self.dims_x) if self.symmetric else self.c

    def reshifted(self, delta_x: Tensor, delta_y: Tensor) -> _PairSums:
        """The same sums over ``x - delta_x`` and ``y - delta_y`` instead of ``x`` and ``y``.

        With ``D_x`` the (Lx, Dx) matrix holding ``delta_x`` per layer, ``m_x = ||delta_x,l||^2`` and
        ``u_x = delta_x,l . s_x,l`` (per layer), expanding ``||x - d||^2 = ||x||^2 - 2 x.d + ||d||^2``::

            s'   = s - n d
            P'   = P - 2 u + n m
            C'   = C - s_x d_y^T - d_x s_y^T + n d_x d_y^T
            R'xy = Rxy - P_x d_y^T - 2 D_x C + 2 u_x d_y^T + m_x s_y^T - n m_x d_y^T
            Q'   = Q - 2 Rxy D_y^T - 2 (Ryx D_x^T)^T + 4 D_x C D_y^T + P_x m_y^T + m_x P_y^T
                     - 2 u_x m_y^T - 2 m_x u_y^T + n m_x m_y^T
        """
        n = self.n
        out = copy.copy(self)
        c = self.full_c()
        d_x = _indicator(self.dims_x, delta_x)
        d_y = d_x if self.symmetric else _indicator(self.dims_y, delta_y)
        m_x, u_x = d_x.square().sum(dim=1), d_x @ self.s_x
        m_y, u_y = (m_x, u_x) if self.symmetric else (d_y.square().sum(dim=1), d_y @ self.s_y)
        out.s_x = self.s_x - n * delta_x
        out.p_x = self.p_x - 2 * u_x + n * m_x
        out.s_y = out.s_x if self.symmetric else self.s_y - n * delta_y
        out.p_y = out.p_x if self.symmetric else self.p_y - 2 * u_y + n * m_y
        if self.debiased:
            dxc = d_x @ c
            out.q = (
                self.q
                - 2 * self.r_xy @ d_y.T
                - 2 * (self.r_yx @ d_x.T).T
                + 4 * dxc @ d_y.T
                + torch.outer(self.p_x, m_y)
                + torch.outer(m_x, self.p_y)
                - 2 * torch.outer(u_x, m_y)
                - 2 * torch.outer(m_x, u_y)
                + n * torch.outer(m_x, m_y)
            )

            def new_r(r: Tensor, p: Tensor, dc: Tensor, u: Tensor, m: Tensor, s: Tensor, d: Tensor) -> Tensor:
                return (
                    r
                    - torch.outer(p, d)
                    - 2 * dc
                    + 2 * torch.outer(u, d)
                    + torch.outer(m, s)
                    - n * torch.outer(m, d)
                )

            out.r_xy = new_r(self.r_xy, self.p_x, dxc, u_x, m_x, self.s_y, delta_y)
            if self.symmetric:
                out.r_yx = out.r_xy
            else:
                out.r_yx = new_r(self.r_yx, self.p_y, d_y @ c.T, u_y, m_y, self.s_x, delta_x)
        new_c = c.clone() if c is self.c else c  # in-place rank-1 updates: no D x D temporaries
        new_c.addr_(self.s_x, delta_y, alpha=-1.0).addr_(delta_x, self.s_y, alpha=-1.0)
        new_c.addr_(delta_x, delta_y, alpha=float(n))
        out.c = _keep_upper(new_c, self.dims_x) if self.symmetric else new_c
        return out

    def __add__(self, other: _PairSums) -> _PairSums:
        out = copy.copy(self)
        out.n = self.n + other.n
        for name in ("s_x", "p_x", "c", "q", "r_xy"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        if self.symmetric:
            out.s_y, out.p_y, out.r_yx = out.s_x, out.p_x, out.r_xy
        else:
            for name in ("s_y", "p_y", "r_yx"):
                setattr(out, name, getattr(self, name) + getattr(other, name))
        return out


class StreamingCKA:
    """Exact linear CKA between all layers of two models (or within one), accumulated batch by batch.

    Memory is O(D_A D_B) (D = total features over layers), independent of the number of examples;
    ``compute()`` equals `cka_matrix` on the concatenated batches (to float64 rounding; 1e-6 with
    float32 inputs). Two accumulators over disjoint data merge into the accumulator over their union,
    so processes can each accumulate their shard and gather then merge (e.g. with
    ``torch.distributed.all_gather_object``). Products run in the batch dtype on shifted values and are
    summed in float64 (see the module docstring).

    Args:
        debiased: accumulate the extra sums of the unbiased HSIC estimator (Song et al. 2012).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> layers = [torch.randn(100, 8, generator=g) for _ in range(3)]
        >>> acc = StreamingCKA()
        >>> for rows in (slice(0, 60), slice(60, 100)):
        ...     _ = acc.update([x[rows] for x in layers])
        >>> acc.compute().shape
        torch.Size([3, 3])
    """

    def __init__(self, *, debiased: bool = False) -> None:
        self.debiased = debiased
        self._within: bool | None = None
        self._dims_a: list[int] = []
        self._dims_b: list[int] = []
        self._shift_a: Tensor | None = None
        self._shift_b: Tensor | None = None
        self._pair: _PairSums | None = None
        self._self_a: list[_PairSums] = []
        self._self_b: list[_PairSums] = []

    @property
    def n_examples(self) -> int:
        """Number of examples accumulated so far."""
        return 0 if self._pair is None else self._pair.n

    def update(self, batch_a: Layers, batch_b: Layers | None = None) -> StreamingCKA:
        """Add one batch of examples.

        Args:
            batch_a: per-layer (n_batch, d_l) tensors of model A (sequence, mapping, or a stacked
                (n_layers, n_batch, d) tensor); same layers and widths in every call.
            batch_b: the same examples through model B's layers, or None (every call) for the
                within-model matrix of A.

        Returns:
            self, so calls chain.

        Raises:
            MeasureError: NaN/inf, mismatched rows, or layers/widths differing from earlier batches; the
                accumulator is left unchanged.
        """
        layers_a = as_layers(batch_a, "batch_a")
        layers_b = None if batch_b is None else as_layers(batch_b, "batch_b")
        if layers_b is not None and layers_b[0].shape[0] != layers_a[0].shape[0]:
            raise MeasureError(
                f"batch_a and batch_b must hold the same examples; got {layers_a[0].shape[0]} and "
                f"{layers_b[0].shape[0]} rows"
            )
        dims_a = [x.shape[1] for x in layers_a]
        dims_b = [] if layers_b is None else [y.shape[1] for y in layers_b]
        if self._within is None:
            self._start(layers_a, layers_b)
        elif self._within != (layers_b is None) or dims_a != self._dims_a or dims_b != self._dims_b:
            raise MeasureError(
                f"this accumulator holds layer widths A={self._dims_a}, B={self._dims_b or 'none'}; the "
                f"batch has A={dims_a}, B={dims_b or 'none'}"
            )
        dtype = compute_dtype(*layers_a, *(layers_b or []))
        assert self._pair is not None and self._shift_a is not None  # set by _start
        shifts_a = [c.to(dtype) for c in self._shift_a.split(dims_a)]
        shifts_b = None if self._shift_b is None else [c.to(dtype) for c in self._shift_b.split(dims_b)]
        for start in range(0, layers_a[0].shape[0], STREAM_CHUNK_ROWS):
            rows = slice(start, start + STREAM_CHUNK_ROWS)
            # exact where it matters: values near the shift subtract without rounding (Sterbenz)
            xs = [x[rows].to(dtype) - c for x, c in zip(layers_a, shifts_a, strict=True)]
            if layers_b is None or shifts_b is None:
                self._pair.add(xs, None)
                continue
            ys = [y[rows].to(dtype) - c for y, c in zip(layers_b, shifts_b, strict=True)]
            self._pair.add(xs, ys)
            for sums, x in zip(self._self_a, xs, strict=True):
                sums.add([x], None)
            for sums, y in zip(self._self_b, ys, strict=True):
                sums.add([y], None)
        return self

    def _start(self, layers_a: list[Tensor], layers_b: list[Tensor] | None) -> None:
        device = layers_a[0].device
        self._within = layers_b is None
        self._dims_a = [x.shape[1] for x in layers_a]
        self._shift_a = _shift(layers_a)
        if layers_b is None:
            self._pair = _PairSums(self._dims_a, self._dims_a, True, self.debiased, device)
            return
        self._dims_b = [y.shape[1] for y in layers_b]
        self._shift_b = _shift(layers_b)
        self._pair = _PairSums(self._dims_a, self._dims_b, False, self.debiased, device)
        self._self_a = [_PairSums([d], [d], True, self.debiased, device) for d in self._dims_a]
        self._self_b = [_PairSums([d], [d], True, self.debiased, device) for d in self._dims_b]

    def merge(self, other: StreamingCKA) -> StreamingCKA:
        """A new accumulator over the union of both accumulators' examples (neither is changed).

        Raises:
            MeasureError: if the two accumulators hold different layers, widths or estimators.
        """
        if not isinstance(other, StreamingCKA):
            raise MeasureError(f"can only merge another StreamingCKA; got {type(other).__name__}")
        if other._pair is None:
            return copy.deepcopy(self)
        if self._pair is None:
            return copy.deepcopy(other)
        mine = (self.debiased, self._within, self._dims_a, self._dims_b)
        theirs = (other.debiased, other._within, other._dims_a, other._dims_b)
        if mine != theirs:
            raise MeasureError(
                f"cannot merge accumulators of different layouts: (debiased, within, widths A, widths B) = "
                f"{mine} vs {theirs}"
            )
        assert self._shift_a is not None and other._shift_a is not None
        out = copy.deepcopy(self)
        delta_a = self._shift_a - other._shift_a.to(self._shift_a.device)
        if self._within:
            out._pair = self._pair + other._pair.reshifted(delta_a, delta_a)
            return out
        assert self._shift_b is not None and other._shift_b is not None
        delta_b = self._shift_b - other._shift_b.to(self._shift_b.device)
        out._pair = self._pair + other._pair.reshifted(delta_a, delta_b)
        for own, incoming, delta, dims in (
            (out._self_a, other._self_a, delta_a, self._dims_a),
            (out._self_b, other._self_b, delta_b, self._dims_b),
        ):
            for i, d in enumerate(delta.split(dims)):
                own[i] = own[i] + incoming[i].reshifted(d, d)
        return out

    def compute(self) -> Tensor:
        """The (La, Lb) float64 CKA matrix (within-model: (La, La), symmetric).

        Raises:
            MeasureError: fewer than 2 examples (4 when debiased), or a layer with zero variance.
        """
        pair = self._pair
        min_n = 4 if self.debiased else 2
        if pair is None or pair.n < min_n:
            raise MeasureError(f"StreamingCKA needs at least {min_n} examples; got {self.n_examples}")
        assert self._shift_a is not None
        n = pair.n
        centered = pair.reshifted(pair.s_x / n, pair.s_y / n)
        cross = block_sq_norms(centered.c, self._dims_a, self._dims_y(), upper=self._within is True)
        mean_a = self._shift_a + pair.s_x / n
        self._check_variance(centered.p_x, mean_a, self._dims_a, "model A")
        if self._within:
            parts = LinearParts(
                n, cross, cross.diagonal().clone(), cross.diagonal().clone(), centered.p_x, centered.p_x
            )
            if self.debiased:
                diag = centered.q.diagonal().clone()
                parts.diag_cross, parts.diag_self_a, parts.diag_self_b = centered.q, diag, diag
        else:
            assert self._shift_b is not None
            self._check_variance(centered.p_y, self._shift_b + pair.s_y / n, self._dims_b, "model B")
            selfs = []
            for sums_list in (self._self_a, self._self_b):
                cs = [s.reshifted(s.s_x / n, s.s_x / n) for s in sums_list]
                m = torch.stack([c.c.square().sum() for c in cs])
                q = torch.stack([c.q[0, 0] for c in cs]) if self.debiased else None
                selfs.append((m, q))
            parts = LinearParts(n, cross, selfs[0][0], selfs[1][0], centered.p_x, centered.p_y)
            if self.debiased:
                parts.diag_cross, parts.diag_self_a, parts.diag_self_b = centered.q, selfs[0][1], selfs[1][1]
        h = hsic_from_parts(parts, debiased=self.debiased)
        return cka_from_hsic(*h, what="StreamingCKA", names=("model A", "model B"), bounded=not self.debiased)

    def _dims_y(self) -> list[int]:
        return self._dims_a if self._within else self._dims_b

    def _check_variance(self, centered_sq: Tensor, mean: Tensor, dims: list[int], name: str) -> None:
        n = self.n_examples
        mean_sq = torch.stack([m.square().sum() for m in mean.split(dims)])
        labels = [f"layer {i} of {name}" for i in range(len(dims))]
        check_variance(centered_sq, centered_sq + n * mean_sq, n, labels, "StreamingCKA")
