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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tunescope.errors import MeasureError

__all__ = ["Blocks", "find_blocks"]


@dataclass(frozen=True)
class Blocks:
    """Result of `find_blocks`.

    Attributes:
        blocks: ``(start, stop)`` layer positions, both inclusive, covering ``0..L-1`` in order.
        score: mean within-block minus mean between-block similarity (off-diagonal pairs).
        objective: the maximised ``Q`` (see the module docstring).
    """

    blocks: list[tuple[int, int]]
    score: float
    objective: float

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def labels(self) -> list[int]:
        """Block index of every layer position."""
        return [b for b, (start, stop) in enumerate(self.blocks) for _ in range(start, stop + 1)]


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
    off = ~torch.eye(n, dtype=torch.bool)
    mean = float(m[off].mean()) if n > 1 else 0.0
    gain = (m - resolution * mean).masked_fill(~off, 0.0)
    prefix = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    prefix[1:, 1:] = gain.cumsum(0).cumsum(1)

    def weight(i: int, j: int) -> float:  # sum over pairs p < q inside block i..j
        s = prefix[j + 1, j + 1] - prefix[i, j + 1] - prefix[j + 1, i] + prefix[i, i]
        return float(s) / 2

    w = [[weight(i, j) if i <= j else 0.0 for j in range(n)] for i in range(n)]
    max_k = n if n_blocks is None else n_blocks
    neg = float("-inf")
    # best[k][j]: best objective of layers 0..j in exactly k blocks
    # start[k][j]: first layer of the last of those k blocks
    best = [[neg] * n for _ in range(max_k + 1)]
    start = [[0] * n for _ in range(max_k + 1)]
    for j in range(n):
        best[1][j] = w[0][j]
    for k in range(2, max_k + 1):
        for j in range(k - 1, n):
            for i in range(k - 1, j + 1):
                value = best[k - 1][i - 1] + w[i][j]
                if value > best[k][j] + 1e-12:
                    best[k][j], start[k][j] = value, i
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
    result = Blocks(blocks, 0.0, best[k][n - 1])
    return Blocks(blocks, contrast(m, result.labels()), best[k][n - 1])
