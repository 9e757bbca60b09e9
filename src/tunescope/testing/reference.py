"""Slow, obviously-correct float64 NumPy references for the similarity measures, written straight
from the papers' formulas (explicit centering matrices and loops where that is clearer).

Independent of `tunescope.similarity` on purpose: it never imports it, so a test comparing the two
compares two derivations. Inputs are anything ``numpy.asarray`` accepts (tensors included); outputs are
Python floats or float64 arrays. Only for small inputs: most functions are O(n^3) or worse.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = [
    "centering_matrix",
    "hsic_biased",
    "hsic_unbiased",
    "linear_cka",
    "rbf_gram",
    "rbf_cka",
    "cka_matrix",
    "minibatch_cka",
    "rdm",
    "rsa",
    "kendall_tau_a",
    "canonical_correlations",
    "svcca",
    "pwcca",
    "procrustes",
    "block_objective",
    "brute_force_blocks",
]


def _f64(x: Any) -> Array:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def centering_matrix(n: int) -> Array:
    """``H = I - 1 1^T / n``."""
    return np.eye(n) - np.ones((n, n)) / n


def hsic_biased(k: Array, l: Array) -> float:  # noqa: E741
    """Gretton et al. (2005): ``tr(K H L H) / (n - 1)^2``."""
    n = k.shape[0]
    h = centering_matrix(n)
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def hsic_unbiased(k: Array, l: Array) -> float:  # noqa: E741
    """Song et al. (2012), eq. 5, with ``K~``, ``L~`` the Gram matrices with zeroed diagonals::

    [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))
    """
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value) / (n * (n - 3))


def _cka_from_grams(k: Array, l: Array, debiased: bool) -> float:  # noqa: E741
    hsic = hsic_unbiased if debiased else hsic_biased
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def linear_cka(x: Any, y: Any, debiased: bool = False) -> float:
    """Kornblith et al. (2019): CKA with linear kernels ``K = X X^T`` (no explicit centering of X)."""
    x, y = _f64(x), _f64(y)
    return _cka_from_grams(x @ x.T, y @ y.T, debiased)


def rbf_gram(x: Any, sigma: float) -> Array:
    """``exp(-|x_i - x_j|^2 / (2 sigma^2 median))``, median over the full n x n squared-distance matrix
    (Kornblith et al.'s reference code), distances by an explicit double loop."""
    x = _f64(x)
    n = x.shape[0]
    sq = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            sq[i, j] = float(np.sum((x[i] - x[j]) ** 2))
    return np.asarray(np.exp(-sq / (2.0 * sigma**2 * np.median(sq))))


def rbf_cka(x: Any, y: Any, sigma: float = 0.8, debiased: bool = False) -> float:
    return _cka_from_grams(rbf_gram(x, sigma), rbf_gram(y, sigma), debiased)


def cka_matrix(reps_a: Sequence[Any], reps_b: Sequence[Any] | None = None, debiased: bool = False) -> Array:
    """Per-pair loop of `linear_cka`."""
    reps_b = reps_a if reps_b is None else reps_b
    return np.array([[linear_cka(a, b, debiased) for b in reps_b] for a in reps_a])


def minibatch_cka(x: Any, y: Any, batch_size: int) -> float:
    """Nguyen et al. (2021): mean unbiased HSIC over consecutive minibatches, then the CKA ratio.

    A last minibatch under 4 rows is joined to the previous one (as tunescope documents).
    """
    x, y = _f64(x), _f64(y)
    n = x.shape[0]
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 4:
        starts.pop()
    bounds = [*starts, n]
    xy = xx = yy = 0.0
    for a, b in itertools.pairwise(bounds):
        k, l = x[a:b] @ x[a:b].T, y[a:b] @ y[a:b].T  # noqa: E741
        xy += hsic_unbiased(k, l)
        xx += hsic_unbiased(k, k)
        yy += hsic_unbiased(l, l)
    return xy / np.sqrt(xx * yy)


def rdm(x: Any, method: str) -> Array:
    """Dissimilarity of every pair of rows, by a double loop.

    correlation: ``1 - pearson(x_i, x_j)``; cosine: ``1 - cos``; euclidean: ``sum (x_i - x_j)^2 / d``
    (rsatoolbox's squared, per-feature convention).
    """
    x = _f64(x)
    n, d = x.shape
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a, b = x[i], x[j]
            if method == "correlation":
                a, b = a - a.mean(), b - b.mean()
                out[i, j] = 1.0 - a @ b / np.sqrt((a @ a) * (b @ b))
            elif method == "cosine":
                out[i, j] = 1.0 - a @ b / np.sqrt((a @ a) * (b @ b))
            elif method == "euclidean":
                out[i, j] = float(np.sum((a - b) ** 2)) / d
            else:
                raise ValueError(method)
    return out


def kendall_tau_a(u: Array, v: Array) -> float:
    """``(concordant - discordant) / (m (m - 1) / 2)`` over all pairs of entries, by a double loop."""
    m = len(u)
    s = 0.0
    for i in range(m):
        for j in range(i + 1, m):
            s += np.sign(u[i] - u[j]) * np.sign(v[i] - v[j])
    return s / (m * (m - 1) / 2)


def rsa(x: Any, y: Any, rdm_method: str, compare: str) -> float:
    """Compare upper triangles with scipy's statistics (spearman, pearson, kendall tau-b), the tau-a
    loop above, rsatoolbox's rho-a formula, or the cosine."""
    from scipy import stats

    iu = np.triu_indices(_f64(x).shape[0], 1)
    u, v = rdm(x, rdm_method)[iu], rdm(y, rdm_method)[iu]
    if compare == "spearman":
        return float(stats.spearmanr(u, v).statistic)
    if compare == "pearson":
        return float(stats.pearsonr(u, v).statistic)
    if compare in ("kendall", "kendall_tau_b"):
        return float(stats.kendalltau(u, v).statistic)
    if compare == "kendall_tau_a":
        return kendall_tau_a(u, v)
    if compare == "rho_a":
        ru, rv = stats.rankdata(u), stats.rankdata(v)
        m = len(u)
        return float(12.0 * np.sum((ru - ru.mean()) * (rv - rv.mean())) / (m**3 - m))
    if compare == "cosine":
        return float(u @ v / np.sqrt((u @ u) * (v @ v)))
    raise ValueError(compare)


def _inv_sqrt(c: Array) -> Array:
    w, v = np.linalg.eigh(c)
    return np.asarray(v @ np.diag(w**-0.5) @ v.T)


def canonical_correlations(x: Any, y: Any) -> tuple[Array, Array]:
    """Hotelling (1936): singular values of ``S_xx^{-1/2} S_xy S_yy^{-1/2}`` from covariance matrices
    (needs full-rank covariances), and the unit-norm canonical variates of ``x`` as columns."""
    x, y = _f64(x), _f64(y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    u, rho, _ = np.linalg.svd(_inv_sqrt(sxx) @ sxy @ _inv_sqrt(syy))
    k = min(x.shape[1], y.shape[1])
    variates = xc @ _inv_sqrt(sxx) @ u[:, :k]
    return rho[:k], variates / np.linalg.norm(variates, axis=0)


def _top_directions(x: Array, variance: float | None, n_components: int | None) -> Array:
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    if n_components is not None:
        k = n_components
    else:
        assert variance is not None
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, variance - 1e-12) + 1)
    return np.asarray(u[:, :k] * s[:k])


def svcca(x: Any, y: Any, variance: float | None = 0.99, n_components: int | None = None) -> float:
    """Raghu et al. (2017): SVD-reduce each side, then the mean canonical correlation."""
    rx = _top_directions(_f64(x), variance, n_components)
    ry = _top_directions(_f64(y), variance, n_components)
    return float(np.mean(canonical_correlations(rx, ry)[0]))


def pwcca(x: Any, y: Any) -> float:
    """Morcos et al. (2018): ``sum_i a_i rho_i`` with ``a_i ∝ sum_j |<h_i, x_j>|`` on the side with
    fewer neurons (x on a tie), ``h_i`` unit canonical variates, ``x_j`` centered neurons."""
    x, y = _f64(x), _f64(y)
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    rho, h = canonical_correlations(x, y)
    xc = x - x.mean(0)
    a = np.array([sum(abs(h[:, i] @ xc[:, j]) for j in range(x.shape[1])) for i in range(h.shape[1])])
    return float(np.sum(a / a.sum() * rho))


def procrustes(x: Any, y: Any) -> float:
    """Ding et al. (2021): ``min_R ||A - B R||_F^2`` over orthogonal R, with A, B centered, unit
    Frobenius norm and zero-padded to one width; R from ``scipy.linalg.orthogonal_procrustes``."""
    from scipy.linalg import orthogonal_procrustes

    a, b = _f64(x), _f64(y)
    a, b = a - a.mean(0), b - b.mean(0)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    d = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
    r, _ = orthogonal_procrustes(b, a)
    return float(np.sum((a - b @ r) ** 2))


def block_objective(m: Any, blocks: Sequence[tuple[int, int]], resolution: float = 1.0) -> float:
    """``sum_blocks sum_{i<j in block} (M_ij - resolution * mean off-diagonal M)`` by loops."""
    m = _f64(m)
    n = m.shape[0]
    mean = (m.sum() - np.trace(m)) / (n * (n - 1))
    total = 0.0
    for start, stop in blocks:
        for i in range(start, stop + 1):
            for j in range(i + 1, stop + 1):
                total += m[i, j] - resolution * mean
    return total


def brute_force_blocks(
    m: Any, n_blocks: int | None = None, resolution: float = 1.0
) -> tuple[list[tuple[int, int]], float]:
    """Best contiguous segmentation by enumerating all 2^(L-1) of them (small L only)."""
    n = _f64(m).shape[0]
    best: tuple[list[tuple[int, int]], float] = ([], -np.inf)
    for cuts in itertools.product([False, True], repeat=n - 1):
        starts = [0] + [i + 1 for i, c in enumerate(cuts) if c]
        blocks = [(s, e - 1) for s, e in zip(starts, [*starts[1:], n], strict=True)]
        if n_blocks is not None and len(blocks) != n_blocks:
            continue
        value = block_objective(m, blocks, resolution)
        if value > best[1] + 1e-12:
            best = (blocks, value)
    return best
