"""Percentile bootstrap confidence intervals over examples (Efron & Tibshirani 1993, ch. 13).

`bootstrap_ci` evaluates any measure on each resample. `bootstrap_linear_cka` does the same for many
linear-CKA pairs at once without touching the features again: each layer's Gram matrix is computed once
and a resample is a vector of counts (see its docstring), so its samples equal `bootstrap_ci`'s for the
same ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tunescope.errors import MeasureError
from tunescope.similarity.cka import checked_pair
from tunescope.similarity.matrix import get_measure

__all__ = ["BootstrapCI", "bootstrap_ci", "bootstrap_linear_cka", "resample_counts", "percentile_interval"]


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
    index = _resample_index(n, n_boot, seed).to(x.device)
    samples = torch.tensor([float(fn(x[rows], y[rows])) for rows in index], dtype=torch.float64)
    low, high = percentile_interval(samples, level)
    return BootstrapCI(estimate, low, high, level, samples)


def percentile_interval(samples: Tensor, level: float) -> tuple[float, float]:
    """The ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of (n_boot,) ``samples`` (interpolated)."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(samples.to(torch.float64).cpu(), q).tolist()
    return float(low), float(high)


def _resample_index(n: int, n_boot: int, seed: int) -> Tensor:
    """(n_boot, n) row indices drawn with replacement; the one draw every bootstrap here shares."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(n, (n_boot, n), generator=gen)


def resample_counts(n: int, n_boot: int, seed: int) -> Tensor:
    """(n_boot, n) float64 counts: how often each example is drawn in each resample of `bootstrap_ci`.

    Example:
        >>> counts = resample_counts(5, 3, seed=0)
        >>> counts.shape, counts.sum(1).tolist()
        (torch.Size([3, 5]), [5.0, 5.0, 5.0])
    """
    index = _resample_index(n, n_boot, seed)
    counts = torch.zeros(n_boot, n, dtype=torch.float64)
    return counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))


EXACT_MAX_EXAMPLES = 400
"""Up to this many examples ``bootstrap_linear_cka(exact=None)`` resamples exactly; above, linearly."""


def bootstrap_linear_cka(
    layers: Sequence[Tensor],
    pairs: Sequence[tuple[int, int]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    exact: bool | None = True,
    batch_size: int = 250,
    centered: bool = False,
) -> tuple[Tensor, Tensor]:
    """Linear CKA of many layer pairs on the full data and on each bootstrap resample of the examples.

    With features centered once (``K 1 = 0`` for the Gram matrix ``K = X X^T``), a resample that draws
    example ``i`` ``w_i`` times (``sum w = n``, ``d = w - 1``) has the biased HSIC numerator
    (Gretton et al. 2005) ``n^2 HSIC_w = tr(K_r H L_r H)`` of the resampled rows, written with counts:

        ``w^T (K * L) w - (2/n) sum_i w_i (K d)_i (L d)_i + (d^T K d)(d^T L d) / n^2``

    so no resampled feature matrix is ever built. ``exact=True`` evaluates it: each layer's Gram matrix
    once (``n^2 d_l`` multiply-adds), then one ``(n_boot, n) x (n, n)`` product per pair and per layer;
    the samples then equal `bootstrap_ci`'s for ``linear_cka`` and the same ``seed`` (same draws).
    ``exact=False`` keeps the terms linear in ``d``: ``1^T P 1 + 2 (P 1)^T d`` with ``P = K * L`` (the
    linear bootstrap, i.e. the nonparametric delta method with the empirical influence values ``2 P 1``;
    Davison & Hinkley 1997, sec. 2.7), which costs ``n^2`` per pair instead of ``n_boot n^2``; the
    dropped terms are ``O(1/n)`` against the ``O(1/sqrt(n))`` spread. CKA is
    ``HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))`` (Kornblith et al. 2019), computed per resample from
    those numerators. Gram matrices are products in the input dtype summed to float64.

    Args:
        layers: per-layer (n_examples, d_l) tensors of the same examples (any models).
        pairs: ``(i, j)`` positions in ``layers`` whose CKA is wanted.
        n_boot: number of resamples, >= 2.
        seed: seed of the resampling generator.
        exact: every term (True) or the linear bootstrap (False, about ``n_boot`` times cheaper); None
            chooses: exact up to :data:`EXACT_MAX_EXAMPLES` examples, where the linear form's dropped
            ``O(1/n)`` terms are not small (at n = 40 it can put CKA of 0.7 anywhere in [0, 1]), linear
            above, where the exact form costs ``n_boot n^2`` per pair.
        batch_size: resamples per matrix product when exact (memory: ``batch_size * n`` floats).
        centered: shift each pair's resamples by the bootstrap estimate of bias (their mean minus the
            estimate), the bias-corrected percentile interval (Efron & Tibshirani 1993, sec. 10.6).
            Biased CKA of a resample rises with its repeated examples, and in high dimension (d ~ n)
            by more than the interval is wide: at n = 1000, d = 384 the raw exact percentile interval
            can miss its own estimate. The linear form has no such bias (its mean is the estimate).

    Returns:
        ``(estimate, samples)``: (n_pairs,) CKA on all examples and (n_boot, n_pairs) CKA per resample,
        float64, on the CPU.

    Raises:
        MeasureError: fewer than 2 examples, different n, bad ``n_boot``, pair positions out of range,
            a layer with no variance.

    Example:
        >>> import torch
        >>> from tunescope.similarity import linear_cka
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(30, 4, generator=g, dtype=torch.float64)
        >>> y = x + 0.5 * torch.randn(30, 4, generator=g, dtype=torch.float64)
        >>> estimate, samples = bootstrap_linear_cka([x, y], [(0, 1)], n_boot=20)
        >>> ci = bootstrap_ci(linear_cka, x, y, n_boot=20)
        >>> torch.allclose(samples[:, 0], ci.samples, atol=1e-12)
        True
    """
    if n_boot < 2:
        raise MeasureError(f"n_boot must be >= 2; got {n_boot}")
    if not layers:
        raise MeasureError("bootstrap_linear_cka needs at least one layer")
    mats = [checked_pair(x, layers[0], min_n=2, what="bootstrap_linear_cka")[0] for x in layers]
    for i, j in pairs:
        if not (0 <= i < len(mats) and 0 <= j < len(mats)):
            raise MeasureError(f"bootstrap_linear_cka: pair {(i, j)} is outside 0..{len(mats) - 1}")
    n, device = mats[0].shape[0], mats[0].device
    if exact is None:
        exact = n <= EXACT_MAX_EXAMPLES
    used = sorted({i for pair in pairs for i in pair})
    grams = {}
    for i in used:
        xc = mats[i] - mats[i].to(torch.float64).mean(0).to(mats[i].dtype)
        grams[i] = (xc @ xc.T).to(torch.float64)
    need = sorted({(i, i) for i in used} | {(min(i, j), max(i, j)) for i, j in pairs})
    w = torch.cat([torch.ones(1, n, dtype=torch.float64), resample_counts(n, n_boot, seed)]).to(device)
    d = w - 1  # row 0: the full data (d = 0)
    hsic: dict[tuple[int, int], Tensor] = {}
    if exact:
        chunks = [slice(start, start + batch_size) for start in range(0, n_boot + 1, batch_size)]
        kd = {i: d @ grams[i] for i in used}  # (n_boot + 1, n): K d = K w for each resample
        dkd = {i: (kd[i] * d).sum(1) for i in used}
        for i, j in need:
            product = grams[i] * grams[j]
            quad = torch.cat([((w[rows] @ product) * w[rows]).sum(1) for rows in chunks])
            hsic[(i, j)] = (quad - 2 / n * (w * kd[i] * kd[j]).sum(1) + dkd[i] * dkd[j] / n**2).cpu()
    else:
        for i, j in need:
            influence = torch.einsum("ab,ab->a", grams[i], grams[j])  # P 1
            hsic[(i, j)] = (influence.sum() + 2 * d @ influence).cpu()
    for i in used:
        if float(hsic[(i, i)][0]) <= 0:
            raise MeasureError(f"bootstrap_linear_cka: layer {i} has no variance, so its CKA is undefined")
    cka = torch.stack(
        [
            hsic[(min(i, j), max(i, j))] / (hsic[(i, i)] * hsic[(j, j)]).clamp_min(1e-300).sqrt()
            for i, j in pairs
        ],
        dim=1,
    ).clamp(0.0, 1.0)
    estimate, samples = cka[0], cka[1:]
    if centered:
        samples = (samples - (samples.mean(0) - estimate)).clamp(0.0, 1.0)
    return estimate, samples
