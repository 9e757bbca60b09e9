"""Contiguous blocks of similar layers in a within-model similarity matrix.

A segmentation of layers ``0..L-1`` into contiguous blocks is scored by the additive objective

    ``Q = sum over blocks B of sum_{i < j in B} (M_ij - gamma * m)``

where ``m`` is the mean off-diagonal similarity and ``gamma`` the ``resolution`` (1 by default): a layer
joins a block when its similarity to the block's layers is above the matrix's average, as in modularity
(Newman 2006) restricted to contiguous communities. Because ``Q`` is a sum over blocks, dynamic
programming over the end of the last block finds the exact optimum in O(k L^2) for exactly ``k`` blocks;
with ``n_blocks=None`` the number of blocks is the one with the highest ``Q`` (no penalty term is needed:
the ``- gamma m`` per pair already charges for large blocks).

The reported ``score`` is the contrast the issue asks for: mean within-block similarity minus mean
between-block similarity (off-diagonal pairs; 0 when either set of pairs is empty).

**Blocks against a null.** The segmentation always finds blocks, even in a matrix that has none: a
smooth banded matrix ``exp(-|i - j| / w)`` is cut in two with a contrast of 0.2-0.4. So every result is
also tested against the simplest structure without blocks, a similarity that only decays with layer
distance. Both models are fitted by least squares to the off-diagonal entries ``i < j``:

* the **decay model**: the best non-increasing function of ``|i - j|`` (isotonic regression of the
  entries on the distance, pool-adjacent-violators; Barlow et al. 1972), a monotone Toeplitz matrix;
* the **block model**: one constant per pair of blocks (the mean of the entries within each block and
  between each pair of blocks), with the blocks `find_blocks` found.

``margin = (RSS_decay - RSS_block) / TSS``, with ``TSS`` the entries' sum of squares about their mean:
the share of the off-diagonal variance the blocks explain beyond what a smooth decay explains (``R^2``
of the block model minus ``R^2`` of the decay model; in [-1, 1], 0 for a matrix with at most one
off-diagonal value or no variance). The result is ``significant`` when ``margin > MARGIN_THRESHOLD``
(0.1). Calibration (tests/test_blocks.py): banded matrices ``exp(-|i - j| / w)`` with L = 7, 13, 25,
``w`` from 2 to L, exact or with noise 0.03, give margins from -0.58 to -0.39; planted matrices of 2 to
4 blocks (within 0.85, between 0.35, noise 0.05, seeds 0-2, L = 7 to 25) give 0.42 to 0.68. The
threshold sits between the two with room on both sides and asks the blocks for at least ten points of
explained variance more than the decay. On the demo (MiniLM, 1000 examples) the base model's top layer
stands apart (margin 0.14) while the fine-tuned model's matrix is a smooth decay (margin -0.25).

`block_test` adds a bootstrap over examples: the matrix is recomputed on each resample (linear CKA from
Gram matrices computed once, `tunescope.similarity.bootstrap_linear_cka`), blocks are found again and
the margin recomputed; ``p_value`` is the fraction of resamples whose margin is at most the threshold
(a percentile-bootstrap test of ``margin <= MARGIN_THRESHOLD``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tunescope.errors import MeasureError

__all__ = ["MARGIN_THRESHOLD", "BlockTest", "Blocks", "block_margin", "block_test", "find_blocks"]

#: a block structure is significant when its margin over the decay model is above this (module docstring)
MARGIN_THRESHOLD = 0.1


@dataclass(frozen=True)
class Blocks:
    """Result of `find_blocks`.

    Attributes:
        blocks: ``(start, stop)`` layer positions, both inclusive, covering ``0..L-1`` in order.
        score: mean within-block minus mean between-block similarity (off-diagonal pairs).
        objective: the maximised ``Q`` (see the module docstring).
        margin: share of the off-diagonal variance the blocks explain beyond a smooth decay with layer
            distance (module docstring).
        significant: ``margin > MARGIN_THRESHOLD``.
    """

    blocks: list[tuple[int, int]]
    score: float
    objective: float
    margin: float = 0.0
    significant: bool = False

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def labels(self) -> list[int]:
        """Block index of every layer position."""
        return _labels(self.blocks)


def _check_matrix(matrix: Tensor) -> Tensor:
    if not isinstance(matrix, Tensor) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise MeasureError(f"find_blocks needs a square (n_layers, n_layers) similarity matrix; got {shape}")
    if matrix.shape[0] == 0:
        raise MeasureError("find_blocks got an empty matrix")
    m = matrix.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(m).all()):
        raise MeasureError("find_blocks: the matrix contains NaN or infinite values")
    if not torch.allclose(m, m.T, rtol=1e-6, atol=1e-9):
        raise MeasureError(
            "find_blocks needs a symmetric within-model matrix (cka_matrix(reps) with reps_b=None); "
            "this one is not symmetric"
        )
    return (m + m.T) / 2


def contrast(m: Tensor, labels: list[int]) -> float:
    """Mean within-block minus mean between-block off-diagonal similarity (0 if either is empty)."""
    lab = torch.tensor(labels)
    same = lab[:, None] == lab[None, :]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    within, between = m[same & off], m[~same]
    if within.numel() == 0 or between.numel() == 0:
        return 0.0
    return float(within.mean() - between.mean())


def find_blocks(matrix: Tensor, *, n_blocks: int | None = None, resolution: float = 1.0) -> Blocks:
    """Split the layer axis into contiguous blocks of mutually similar layers (exact optimum).

    Args:
        matrix: (n_layers, n_layers) symmetric similarity (e.g. ``cka_matrix(reps)``).
        n_blocks: exact number of blocks, or None to choose it by the objective (module docstring).
        resolution: ``gamma``; larger values favour more, smaller blocks.

    Returns:
        `Blocks` with inclusive ``(start, stop)`` positions, the contrast ``score`` and the objective.

    Raises:
        MeasureError: non-square, asymmetric or non-finite matrix; n_blocks outside 1..n_layers.

    Example:
        >>> import torch
        >>> m = torch.tensor([[1.0, 0.9, 0.2, 0.1],
        ...                   [0.9, 1.0, 0.3, 0.2],
        ...                   [0.2, 0.3, 1.0, 0.8],
        ...                   [0.1, 0.2, 0.8, 1.0]])
        >>> result = find_blocks(m)
        >>> result.blocks, round(result.score, 2)
        ([(0, 1), (2, 3)], 0.65)
    """
    m = _check_matrix(matrix)
    n = m.shape[0]
    if n_blocks is not None and not 1 <= n_blocks <= n:
        raise MeasureError(f"n_blocks must be between 1 and {n}; got {n_blocks}")
    values = m.numpy()
    blocks, objective = _segment(values, n_blocks, resolution)
    labels = _labels(blocks)
    margin = _margin(values, np.asarray(labels))
    return Blocks(blocks, contrast(m, labels), objective, margin, margin > MARGIN_THRESHOLD)


def _labels(blocks: list[tuple[int, int]]) -> list[int]:
    return [b for b, (start, stop) in enumerate(blocks) for _ in range(start, stop + 1)]


def _segment(m: np.ndarray, n_blocks: int | None, resolution: float) -> tuple[list[tuple[int, int]], float]:
    """The exact optimum of ``Q`` by dynamic programming (module docstring); float64 numpy in and out."""
    n = m.shape[0]
    off = ~np.eye(n, dtype=bool)
    mean = float(m[off].mean()) if n > 1 else 0.0
    gain = np.where(off, m - resolution * mean, 0.0)
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = gain.cumsum(0).cumsum(1)
    diag = np.diag(prefix)
    # w[i][j]: sum over pairs p < q inside block i..j
    w = ((diag[None, 1:] - prefix[:-1, 1:] - prefix[1:, :-1].T + diag[:-1, None]) / 2).tolist()
    max_k = n if n_blocks is None else n_blocks
    neg = float("-inf")
    # best[k][j]: best objective of layers 0..j in exactly k blocks
    # start[k][j]: first layer of the last of those k blocks
    best = [[neg] * n for _ in range(max_k + 1)]
    start = [[0] * n for _ in range(max_k + 1)]
    best[1] = list(w[0])
    for k in range(2, max_k + 1):
        prev, row, first = best[k - 1], best[k], start[k]
        for j in range(k - 1, n):
            for i in range(k - 1, j + 1):
                value = prev[i - 1] + w[i][j]
                if value > row[j] + 1e-12:
                    row[j], first[j] = value, i
    if n_blocks is None:
        k = max(range(1, max_k + 1), key=lambda kk: (round(best[kk][n - 1], 12), -kk))
    else:
        k = n_blocks
    blocks: list[tuple[int, int]] = []
    j = n - 1
    for kk in range(k, 0, -1):
        i = start[kk][j] if kk > 1 else 0
        blocks.append((i, j))
        j = i - 1
    blocks.reverse()
    return blocks, best[k][n - 1]


def _decreasing_fit(means: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-increasing fit of ``means`` (pool adjacent violators)."""
    pools: list[list[float]] = []  # [weighted sum, weight, count]
    for y, wt in zip(means, weights, strict=True):
        pools.append([y * wt, wt, 1.0])
        while len(pools) > 1 and pools[-2][0] / pools[-2][1] < pools[-1][0] / pools[-1][1]:
            total, wt2, count = pools.pop()
            pools[-1][0] += total
            pools[-1][1] += wt2
            pools[-1][2] += count
    return [total / wt for total, wt, count in pools for _ in range(int(count))]


def _margin(m: np.ndarray, labels: np.ndarray) -> float:
    """``(RSS_decay - RSS_block) / TSS`` over the entries above the diagonal (module docstring)."""
    n = m.shape[0]
    rows, cols = np.triu_indices(n, 1)
    x = m[rows, cols]
    tss = float(((x - x.mean()) ** 2).sum()) if x.size else 0.0
    if x.size < 2 or tss <= 1e-12 * max(1.0, float((x**2).sum())):
        return 0.0
    distance = cols - rows
    counts = np.bincount(distance, minlength=n)[1:]
    sums = np.bincount(distance, weights=x, minlength=n)[1:]
    fit = np.asarray(_decreasing_fit((sums / counts).tolist(), counts.tolist()))
    rss_decay = float(((x - fit[distance - 1]) ** 2).sum())
    cell = labels[rows] * n + labels[cols]
    cell_sums = np.bincount(cell, weights=x, minlength=n * n)
    cell_counts = np.bincount(cell, minlength=n * n)
    cell_means = cell_sums / np.maximum(cell_counts, 1)
    rss_block = float(((x - cell_means[cell]) ** 2).sum())
    return (rss_decay - rss_block) / tss


def _segment_many(ms: np.ndarray) -> np.ndarray:
    """The (B, n) block labels of :func:`_segment` (``n_blocks=None``, ``resolution=1``) of each of ``ms``.

    The same dynamic programme, run over the resamples as arrays; ties go to the earliest block start
    and, between numbers of blocks, to the fewest blocks, as in :func:`_segment`.
    """
    b, n = ms.shape[0], ms.shape[1]
    off = ~np.eye(n, dtype=bool)
    mean = ms[:, off].mean(axis=1) if n > 1 else np.zeros(b)
    gain = np.where(off, ms - mean[:, None, None], 0.0)
    prefix = np.zeros((b, n + 1, n + 1))
    prefix[:, 1:, 1:] = gain.cumsum(1).cumsum(2)
    diag = prefix[:, np.arange(n + 1), np.arange(n + 1)]
    w = (
        diag[:, None, 1:] - prefix[:, :-1, 1:] - prefix[:, 1:, :-1].transpose(0, 2, 1) + diag[:, :-1, None]
    ) / 2
    best = np.full((b, n + 1, n), -np.inf)
    start = np.zeros((b, n + 1, n), dtype=np.int64)
    best[:, 1] = w[:, 0]
    for k in range(2, n + 1):
        for j in range(k - 1, n):
            firsts = np.arange(k - 1, j + 1)
            values = best[:, k - 1, firsts - 1] + w[:, firsts, j]
            pick = values.argmax(axis=1)
            best[:, k, j] = values[np.arange(b), pick]
            start[:, k, j] = firsts[pick]
    k = np.round(best[:, 1:, n - 1], 12).argmax(axis=1) + 1  # the first maximum: the fewest blocks
    labels = np.zeros((b, n), dtype=np.int64)
    stop = np.full(b, n - 1)
    positions = np.arange(n)
    for _ in range(n):
        active = k >= 1
        if not active.any():
            break
        first = np.where(k > 1, start[np.arange(b), np.maximum(k, 1), np.maximum(stop, 0)], 0)
        inside = active[:, None] & (positions >= first[:, None]) & (positions <= stop[:, None])
        labels[inside] = np.broadcast_to((k - 1)[:, None], (b, n))[inside]
        stop, k = first - 1, k - 1
    return labels


def _decreasing_fit_many(means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`_decreasing_fit` of each row of ``means`` (B, D), by the min-max formula of isotonic regression.

    ``fit_t = min over s <= t of max over u >= t of mean(s..u)`` (weighted means of runs; Barlow et al.
    1972), the non-increasing least-squares fit.
    """
    b, d = means.shape
    total = np.concatenate([np.zeros((b, 1)), np.cumsum(means * weights, axis=1)], axis=1)
    mass = np.concatenate([[0.0], np.cumsum(weights)])
    s, u = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    with np.errstate(invalid="ignore", divide="ignore"):
        runs = (total[:, u + 1] - total[:, s]) / (mass[u + 1] - mass[s])
    runs = np.where(u >= s, runs, -np.inf)
    later = np.flip(np.maximum.accumulate(np.flip(runs, axis=2), axis=2), axis=2)  # max over u >= t
    later = np.where(s <= u, later, np.inf)  # [s, t] with t in the u axis: only s <= t
    return later.min(axis=1)


def _margins_of_resamples(ms: np.ndarray) -> np.ndarray:
    """The margin of each of ``ms`` (B, n, n) with its own blocks: :func:`_margin` of :func:`_segment`."""
    b, n = ms.shape[0], ms.shape[1]
    labels = _segment_many(ms)
    rows, cols = np.triu_indices(n, 1)
    x = ms[:, rows, cols]
    if x.shape[1] < 2:
        return np.zeros(b)
    tss = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    distance = cols - rows
    counts = np.bincount(distance, minlength=n)[1:].astype(np.float64)
    sums = np.stack([np.bincount(distance, weights=row, minlength=n)[1:] for row in x])
    fit = _decreasing_fit_many(sums / counts, counts)
    rss_decay = ((x - fit[:, distance - 1]) ** 2).sum(axis=1)
    cell = labels[:, rows] * n + labels[:, cols] + (np.arange(b) * n * n)[:, None]
    cell_sums = np.bincount(cell.ravel(), weights=x.ravel(), minlength=b * n * n)
    cell_counts = np.bincount(cell.ravel(), minlength=b * n * n)
    cell_means = cell_sums / np.maximum(cell_counts, 1)
    rss_block = ((x - cell_means[cell]) ** 2).sum(axis=1)
    flat = tss <= 1e-12 * np.maximum(1.0, (x**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        margins = (rss_decay - rss_block) / tss
    return np.where(flat, 0.0, margins)


def block_margin(matrix: Tensor, blocks: list[tuple[int, int]] | None = None) -> float:
    """The ``margin`` of a block model over the decay model (module docstring) for given blocks.

    Args:
        matrix: (n_layers, n_layers) symmetric similarity.
        blocks: inclusive ``(start, stop)`` positions covering the layers in order, or None for those
            `find_blocks` finds.

    Example:
        >>> i = torch.arange(7.0)
        >>> banded = torch.exp(-(i[:, None] - i[None, :]).abs() / 2)  # decays, no blocks
        >>> block_margin(banded) < 0
        True
    """
    if blocks is None:
        return find_blocks(matrix).margin
    m = _check_matrix(matrix)
    if [i for a, b in blocks for i in range(a, b + 1)] != list(range(m.shape[0])):
        raise MeasureError(f"blocks must cover 0..{m.shape[0] - 1} in order; got {blocks}")
    return _margin(m.numpy(), np.asarray(_labels(blocks)))


@dataclass(frozen=True)
class BlockTest:
    """Result of `block_test`: the blocks of the full data and the bootstrap test of their margin.

    Attributes:
        blocks: `find_blocks` on the matrix of all examples (with its ``margin``).
        p_value: fraction of resamples whose margin is at most `MARGIN_THRESHOLD`.
        level: the test's confidence level; ``significant`` needs ``p_value <= 1 - level``.
        margins: (n_boot,) float64 margins of the resamples.
    """

    blocks: Blocks
    p_value: float
    level: float
    margins: Tensor

    @property
    def n_boot(self) -> int:
        return int(self.margins.numel())

    @property
    def significant(self) -> bool:
        """Block structure beyond a smooth decay: margin above the threshold, and p <= 1 - level."""
        return self.blocks.significant and self.p_value <= 1 - self.level

    @classmethod
    def from_samples(cls, matrix: Tensor, samples: Tensor, *, level: float = 0.95) -> BlockTest:
        """The test from a matrix and its (n_boot, n_layers, n_layers) bootstrap resamples."""
        if not 0 < level < 1:
            raise MeasureError(f"level must be in (0, 1); got {level}")
        found = find_blocks(matrix)
        values = samples.detach().to(torch.float64).cpu().numpy()
        if values.ndim != 3 or values.shape[1:] != tuple(matrix.shape) or values.shape[0] < 1:
            raise MeasureError(
                f"samples must be (n_boot, {matrix.shape[0]}, {matrix.shape[0]}); got {values.shape}"
            )
        margins = _margins_of_resamples((values + values.transpose(0, 2, 1)) / 2)
        margin_t = torch.from_numpy(margins)
        p_value = float((margin_t <= MARGIN_THRESHOLD).double().mean())
        return cls(found, p_value, level, margin_t)


def block_test(
    layers: Sequence[Tensor], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95, exact: bool = False
) -> BlockTest:
    """Blocks of the linear-CKA matrix of ``layers`` and a bootstrap p-value for them (module docstring).

    Examples are resampled with replacement; the matrix of each resample comes from Gram matrices
    computed once (`tunescope.similarity.bootstrap_linear_cka`; ``exact=False``: the linear bootstrap,
    about ``n_boot`` times cheaper), so no model is run again. Blocks are found again on each resample.

    Args:
        layers: per-layer (n_examples, d_l) tensors of one model.
        n_boot: number of resamples, >= 2.
        seed: seed of the resampling.
        level: confidence level; significant needs ``p_value <= 1 - level``.
        exact: every term of each resample's CKA instead of the linear bootstrap.

    Returns:
        `BlockTest`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g)
        >>> layers = [a + 0.3 * torch.randn(100, 8, generator=g) for _ in range(3)]
        >>> layers += [b + 0.3 * torch.randn(100, 8, generator=g) for _ in range(3)]
        >>> test = block_test(layers, n_boot=100)
        >>> test.blocks.blocks, test.significant
        ([(0, 2), (3, 5)], True)
    """
    from tunescope.similarity.bootstrap import bootstrap_linear_cka

    n_layers = len(layers)
    pairs = [(i, j) for i in range(n_layers) for j in range(i + 1, n_layers)]
    estimate, samples = bootstrap_linear_cka(layers, pairs, n_boot=n_boot, seed=seed, exact=exact)
    return BlockTest.from_samples(
        pair_matrix(estimate, n_layers), pair_matrix(samples, n_layers), level=level
    )


def pair_matrix(values: Tensor, n_layers: int) -> Tensor:
    """(..., n_pairs) values of the pairs ``i < j`` (row-major) -> (..., n_layers, n_layers), diagonal 1."""
    rows, cols = torch.triu_indices(n_layers, n_layers, 1)
    out = torch.ones(*values.shape[:-1], n_layers, n_layers, dtype=torch.float64)
    out[..., rows, cols] = values.to(torch.float64)
    out[..., cols, rows] = values.to(torch.float64)
    return out
