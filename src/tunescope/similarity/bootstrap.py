"""Percentile bootstrap confidence intervals over examples (Efron & Tibshirani 1993, ch. 13)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity.cka import checked_pair
from tunescope.similarity.matrix import get_measure

__all__ = ["BootstrapCI", "bootstrap_ci"]


@dataclass(frozen=True)
class BootstrapCI:
    """A bootstrap confidence interval.

    Attributes:
        estimate: the measure on all examples.
        low: lower percentile bound.
        high: upper percentile bound.
        level: coverage, e.g. 0.95.
        samples: (n_boot,) float64 values of the measure on the resamples.
    """

    estimate: float
    low: float
    high: float
    level: float
    samples: Tensor

    @property
    def n_boot(self) -> int:
        return int(self.samples.numel())


def bootstrap_ci(
    measure_fn: Callable[[Tensor, Tensor], Tensor] | str,
    x: Tensor,
    y: Tensor,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile bootstrap interval of a similarity measure, resampling examples with replacement.

    Each resample draws n row indices with replacement (the same rows for ``x`` and ``y``) and
    evaluates the measure; the interval is the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of
    those values (linear interpolation, as ``numpy.quantile``). Deterministic for a given ``seed``.

    Args:
        measure_fn: ``f(x, y) -> 0-dim tensor`` (e.g. ``functools.partial(linear_cka, debiased=True)``)
            or a name in `MEASURES`.
        x: (n_examples, d_x).
        y: (n_examples, d_y).
        n_boot: number of resamples, >= 2.
        seed: seed of the resampling generator.
        level: coverage in (0, 1).

    Returns:
        `BootstrapCI`.

    Example:
        >>> import torch
        >>> from tunescope.similarity import linear_cka
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(30, 4, generator=g)
        >>> ci = bootstrap_ci(linear_cka, x, x + 0.5 * torch.randn(30, 4, generator=g), n_boot=20)
        >>> ci.low <= ci.estimate <= ci.high
        True
    """
    fn = get_measure(measure_fn).pairwise if isinstance(measure_fn, str) else measure_fn
    if n_boot < 2:
        raise MeasureError(f"n_boot must be >= 2; got {n_boot}")
    if not 0 < level < 1:
        raise MeasureError(f"level must be in (0, 1); got {level}")
    x, y = checked_pair(x, y, min_n=2, what="bootstrap_ci")
    n = x.shape[0]
    estimate = float(fn(x, y))
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(n, (n_boot, n), generator=gen).to(x.device)
    samples = torch.tensor([float(fn(x[rows], y[rows])) for rows in index], dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(samples, q).tolist()
    return BootstrapCI(estimate, low, high, level, samples)
