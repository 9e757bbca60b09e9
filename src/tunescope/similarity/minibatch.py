"""Minibatch CKA (Nguyen et al. 2021): unbiased HSIC averaged over minibatches.

``CKA_mb = mean_k HSIC_1(K_k, L_k) / sqrt(mean_k HSIC_1(K_k, K_k) mean_k HSIC_1(L_k, L_k))`` with
``K_k``, ``L_k`` the Gram matrices of minibatch ``k`` and ``HSIC_1`` the unbiased estimator of Song et al.
(2012). Because ``HSIC_1`` is unbiased, the average converges to the same population value as CKA over
all examples; memory is O(batch^2) per layer, whatever the number of examples, and any kernel works.
It is an estimate, not the in-memory number: use `StreamingCKA` for exact linear CKA on large n.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from tunescope.errors import MeasureError, UnknownNameError
from tunescope.similarity._linear import cka_from_hsic, hsic_from_parts, linear_parts
from tunescope.similarity._validate import Layers, as_layers, check_variance
from tunescope.similarity.cka import checked_pair, gram_hsic_matrix
from tunescope.similarity.kernels import rbf_gram

__all__ = ["MinibatchCKA", "minibatch_cka", "KERNELS"]

Kernel = Literal["linear", "rbf"]
HsicTriple = tuple[Tensor, Tensor, Tensor]
#: per-batch result: unbiased HSIC (ab, aa, bb) and, per side, (2, L) centered and raw sums of squares
BatchResult = tuple[HsicTriple, list[Tensor]]


def _linear_batch(xs: list[Tensor], ys: list[Tensor] | None, sigma: float) -> BatchResult:
    del sigma
    parts = linear_parts(xs, ys, debiased=True, check=False, what="minibatch CKA")
    assert parts.raw_a is not None and parts.raw_b is not None
    spread = [torch.stack([parts.trace_a, parts.raw_a])]
    if ys is not None:
        spread.append(torch.stack([parts.trace_b, parts.raw_b]))
    return hsic_from_parts(parts, debiased=True), spread


def _rbf_batch(xs: list[Tensor], ys: list[Tensor] | None, sigma: float) -> BatchResult:
    grams_b = None if ys is None else [rbf_gram(y, sigma) for y in ys]
    h = gram_hsic_matrix([rbf_gram(x, sigma) for x in xs], grams_b, debiased=True)
    return h, [_spread(side) for side in (xs, ys) if side is not None]


def _spread(layers: list[Tensor]) -> Tensor:
    """(2, n_layers): within-batch centered and raw sums of squares, for the zero-variance check."""
    out = []
    for x in layers:
        x64 = x.to(torch.float64)
        out.append(torch.stack([(x64 - x64.mean(dim=0)).square().sum(), x64.square().sum()]))
    return torch.stack(out, dim=1)


#: kernel name -> per-batch all-pairs unbiased HSIC
KERNELS: dict[str, Callable[[list[Tensor], list[Tensor] | None, float], BatchResult]] = {
    "linear": _linear_batch,
    "rbf": _rbf_batch,
}


class MinibatchCKA:
    """Accumulates minibatch CKA (Nguyen et al. 2021) for all layer pairs of two models, or within one.

    Each `update` adds one minibatch's unbiased HSIC values; `compute` divides their means. Mergeable:
    ``a.merge(b)`` equals the accumulator that saw both sets of minibatches.

    Args:
        kernel: "linear" or "rbf" (bandwidth ``sigma`` times the minibatch's median distance).
        sigma: RBF bandwidth fraction; ignored by the linear kernel.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(512, 16, generator=g)
        >>> acc = MinibatchCKA()
        >>> for rows in x.split(256):
        ...     _ = acc.update([rows, rows @ torch.randn(16, 16, generator=g)])
        >>> acc.compute().shape
        torch.Size([2, 2])
    """

    def __init__(self, *, kernel: Kernel = "linear", sigma: float = 0.8) -> None:
        if kernel not in KERNELS:
            raise UnknownNameError("kernel", kernel, KERNELS)
        self.kernel = kernel
        self.sigma = sigma
        self.n_batches = 0
        self.n_examples = 0
        self._layout: tuple[bool, list[int], list[int]] | None = None
        self._sums: HsicTriple | None = None
        self._spread: list[Tensor] = []  # per side: (2, L) sums of centered and raw squares

    def update(self, batch_a: Layers, batch_b: Layers | None = None) -> MinibatchCKA:
        """Add one minibatch (at least 4 examples).

        Args:
            batch_a: per-layer (n_batch, d_l) tensors of model A.
            batch_b: the same examples through model B's layers, or None for the within-model matrix.

        Returns:
            self.
        """
        xs = as_layers(batch_a, "batch_a")
        ys = None if batch_b is None else as_layers(batch_b, "batch_b")
        n = xs[0].shape[0]
        if ys is not None and ys[0].shape[0] != n:
            raise MeasureError(
                f"batch_a and batch_b must hold the same examples; got {n} and {ys[0].shape[0]} rows"
            )
        if n < 4:
            raise MeasureError(f"each minibatch needs at least 4 examples (unbiased HSIC); got {n}")
        layout = (ys is None, [x.shape[1] for x in xs], [] if ys is None else [y.shape[1] for y in ys])
        if self._layout is not None and layout != self._layout:
            raise MeasureError(f"batch layout {layout} differs from earlier batches' {self._layout}")
        h, spread = KERNELS[self.kernel](xs, ys, self.sigma)
        self._layout = layout
        self._sums = (
            h if self._sums is None else (self._sums[0] + h[0], self._sums[1] + h[1], self._sums[2] + h[2])
        )
        self._spread = (
            spread if not self._spread else [a + b for a, b in zip(self._spread, spread, strict=True)]
        )
        self.n_batches += 1
        self.n_examples += n
        return self

    def merge(self, other: MinibatchCKA) -> MinibatchCKA:
        """A new accumulator holding both accumulators' minibatches (neither is changed)."""
        if (self.kernel, self.sigma) != (other.kernel, other.sigma):
            raise MeasureError("cannot merge minibatch CKA accumulators with different kernels or sigma")
        if other._sums is None:
            return copy.deepcopy(self)
        if self._sums is None:
            return copy.deepcopy(other)
        if self._layout != other._layout:
            raise MeasureError(f"cannot merge layouts {self._layout} and {other._layout}")
        out = copy.deepcopy(self)
        out._sums = tuple(a + b for a, b in zip(self._sums, other._sums, strict=True))  # type: ignore[assignment]
        out._spread = [a + b for a, b in zip(self._spread, other._spread, strict=True)]
        out.n_batches += other.n_batches
        out.n_examples += other.n_examples
        return out

    def compute(self) -> Tensor:
        """The (La, Lb) float64 minibatch-CKA matrix (within-model: (La, La))."""
        if self._sums is None:
            raise MeasureError("MinibatchCKA.compute() called before any update()")
        for spread, name in zip(self._spread, ("model A", "model B"), strict=False):
            labels = [f"layer {i} of {name}" for i in range(spread.shape[1])]
            check_variance(spread[0], spread[1], self.n_examples, labels, "minibatch CKA")
        return cka_from_hsic(*self._sums, what="minibatch CKA", names=("model A", "model B"))


def minibatch_cka(
    x: Tensor, y: Tensor, *, batch_size: int = 256, kernel: Kernel = "linear", sigma: float = 0.8
) -> Tensor:
    """Minibatch CKA between two representations, over consecutive minibatches of their rows.

    Rows are taken in order (shuffle first if they are sorted by something); a last minibatch with fewer
    than 4 rows is joined to the one before it.

    Args:
        x: (n_examples, d_x), n_examples >= 4.
        y: (n_examples, d_y).
        batch_size: examples per minibatch, >= 4.
        kernel: "linear" or "rbf".
        sigma: RBF bandwidth fraction.

    Returns:
        0-dim float64 tensor.

    Example:
        >>> import torch
        >>> x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
        >>> round(float(minibatch_cka(x, 2 * x, batch_size=100)), 6)
        1.0
    """
    x, y = checked_pair(x, y, min_n=4, what="minibatch_cka")
    if batch_size < 4:
        raise MeasureError(f"batch_size must be >= 4 (unbiased HSIC); got {batch_size}")
    acc = MinibatchCKA(kernel=kernel, sigma=sigma)
    for rows in batch_slices(x.shape[0], batch_size):
        acc.update([x[rows]], [y[rows]])
    return acc.compute()[0, 0]


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of ``batch_size`` rows; a remainder under 4 rows joins the previous slice."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 4:
        starts.pop()
    return [slice(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]
