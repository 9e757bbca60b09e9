"""Representational similarity analysis (Kriegeskorte et al. 2008), numbers as rsatoolbox computes them.

An RDM (representational dissimilarity matrix) holds the dissimilarity of every pair of examples (rows
of ``x``); RSA compares the upper triangles (``i < j``, row-major) of two RDMs.

RDMs (``rdm=``), matching ``rsatoolbox.rdm.calc_rdm(method=...)`` where it has the method:

* ``"correlation"``: ``1 - pearson(x_i, x_j)`` over features (rsatoolbox "correlation").
* ``"cosine"``: ``1 - cos(x_i, x_j)`` (scipy's ``pdist(metric="cosine")``; rsatoolbox has none).
* ``"euclidean"``: **squared** Euclidean distance divided by the number of features,
  ``||x_i - x_j||^2 / d``, which is what rsatoolbox's "euclidean" returns (its RDM is labelled
  "squared euclidean"). Rank comparisons do not see the square; ``pearson`` does.

Comparisons (``compare=``), matching ``rsatoolbox.rdm.compare(method=...)``:

* ``"pearson"`` (rsatoolbox "corr"), ``"spearman"`` (ties get average ranks; rsatoolbox "spearman"),
* ``"kendall_tau_b"`` (alias ``"kendall"``: scipy's tau-b, rsatoolbox "kendall"/"tau-b"),
* ``"kendall_tau_a"`` (no tie correction: ``(concordant - discordant) / (m (m - 1) / 2)``; rsatoolbox
  "tau-a", recommended by Nili et al. 2014 when a model predicts ties),
* ``"rho_a"`` (rsatoolbox "rho-a": ``12 sum_k r_k s_k / (m^3 - m)`` on centered ranks),
* ``"cosine"`` (rsatoolbox "cosine": uncentered cosine of the two vectors).

Kendall's tau runs in scipy (CPU, ``O(m log m)``); the others are tensor code on the input's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tunescope.errors import MeasureError, UnknownNameError
from tunescope.similarity.cka import checked_pair

__all__ = ["rdm", "rsa", "RDM_METHODS", "COMPARISONS"]


def _unit_rows(x: Tensor, what: str) -> Tensor:
    norms = x.norm(dim=1, keepdim=True)
    bad = (norms.flatten() == 0).nonzero().flatten().tolist()
    if bad:
        raise MeasureError(f"{what} RDM is undefined for examples {bad[:10]}: their vector has zero length")
    return x / norms


def _correlation_rdm(x: Tensor) -> Tensor:
    x = x - x.mean(dim=1, keepdim=True)
    u = _unit_rows(x, "correlation (rows with zero variance over features)")
    return 1.0 - u @ u.T


def _cosine_rdm(x: Tensor) -> Tensor:
    u = _unit_rows(x, "cosine")
    return 1.0 - u @ u.T


def _euclidean_rdm(x: Tensor) -> Tensor:
    # Distances do not change under a shift. Subtracting an example (rather than the mean) removes a
    # large common offset, so |a|^2 + |b|^2 - 2ab does not cancel, and keeps integer data integer, so
    # tied dissimilarities stay exactly tied (as in rsatoolbox, which does not shift).
    x = x - x[0]
    sq = x.square().sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min_(0.0).fill_diagonal_(0.0) / x.shape[1]


#: rdm name -> (n, d) float64 -> (n, n) float64
RDM_METHODS: dict[str, Callable[[Tensor], Tensor]] = {
    "correlation": _correlation_rdm,
    "cosine": _cosine_rdm,
    "euclidean": _euclidean_rdm,
}


def _rdm_function(method: str) -> Callable[[Tensor], Tensor]:
    if method not in RDM_METHODS:
        raise UnknownNameError("rdm", method, RDM_METHODS)
    return RDM_METHODS[method]


def rdm(x: Tensor, *, method: str = "correlation") -> Tensor:
    """Representational dissimilarity matrix over the examples (rows) of ``x``.

    Args:
        x: (n_examples, d).
        method: "correlation", "cosine" or "euclidean" (squared, divided by d, as rsatoolbox).

    Returns:
        (n_examples, n_examples) float64, symmetric.

    Example:
        >>> import torch
        >>> rdm(torch.tensor([[0.0], [1.0], [3.0]]), method="euclidean").round(decimals=9)
        tensor([[0., 1., 9.],
                [1., 0., 4.],
                [9., 4., 0.]], dtype=torch.float64)
    """
    x, _ = checked_pair(x, x, min_n=2, what="rdm")
    return _rdm_function(method)(x.to(torch.float64))


def _upper(m: Tensor) -> Tensor:
    i, j = torch.triu_indices(m.shape[0], m.shape[0], 1, device=m.device)
    return m[i, j]


def _average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..m with ties given their average rank (scipy.stats.rankdata's default)."""
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    group_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = group_rank[inverse]
    return ranks


def _unit_centered(v: Tensor, what: str) -> Tensor:
    v = v - v.mean()
    norm = v.norm()
    if norm == 0:
        raise MeasureError(f"{what}: an RDM has all dissimilarities equal, so its correlation is undefined")
    return v / norm


def _prep_pearson(v: Tensor) -> Tensor:
    return _unit_centered(v, "pearson")


def _prep_spearman(v: Tensor) -> Tensor:
    return _unit_centered(_average_ranks(v), "spearman")


def _prep_rho_a(v: Tensor) -> Tensor:
    r = _average_ranks(v)
    m = v.numel()
    return (r - r.mean()) * (12.0 / (m**3 - m)) ** 0.5


def _prep_cosine(v: Tensor) -> Tensor:
    norm = v.norm()
    if norm == 0:
        raise MeasureError("cosine: an RDM is all zeros (identical examples)")
    return v / norm


def _kendall(tau_a: bool) -> Callable[[Tensor, Tensor], Tensor]:
    def compare(u: Tensor, v: Tensor) -> Tensor:
        from scipy.stats import kendalltau  # a core dependency

        a, b = u.cpu().numpy(), v.cpu().numpy()
        tau = float(kendalltau(a, b).statistic)
        if tau != tau:
            raise MeasureError("kendall: an RDM has all dissimilarities equal, so tau is undefined")
        if tau_a:  # tau_b = (C - D) / sqrt((T - ties_u)(T - ties_v)); tau_a = (C - D) / T
            total = a.size * (a.size - 1) / 2
            ties = [
                float((c * (c - 1) / 2).sum())
                for c in (torch.unique(t, return_counts=True)[1] for t in (u, v))
            ]
            tau = tau * ((total - ties[0]) * (total - ties[1])) ** 0.5 / total
        return torch.tensor(tau, dtype=torch.float64, device=u.device)

    return compare


#: compare name -> vector transform whose inner products are the comparison (None: pairwise only)
_PREPARE: dict[str, Callable[[Tensor], Tensor] | None] = {
    "pearson": _prep_pearson,
    "spearman": _prep_spearman,
    "rho_a": _prep_rho_a,
    "cosine": _prep_cosine,
    "kendall_tau_b": None,
    "kendall": None,
    "kendall_tau_a": None,
}
_PAIRWISE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "kendall_tau_b": _kendall(tau_a=False),
    "kendall": _kendall(tau_a=False),
    "kendall_tau_a": _kendall(tau_a=True),
}
#: valid ``compare=`` names
COMPARISONS: tuple[str, ...] = tuple(_PREPARE)


def rsa_matrix(
    layers_a: Sequence[Tensor], layers_b: Sequence[Tensor] | None, *, rdm: str, compare: str
) -> Tensor:
    """RSA between every pair of layers; each layer's RDM (and ranks) computed once.

    Args:
        layers_a: La checked (n, d_a) tensors.
        layers_b: Lb checked (n, d_b) tensors, or None for within ``layers_a``.
        rdm: RDM method name.
        compare: comparison name.

    Returns:
        (La, Lb) float64.
    """
    make = _rdm_function(rdm)
    if compare not in _PREPARE:
        raise UnknownNameError("rsa comparison", compare, _PREPARE)
    if layers_a[0].shape[0] < 3:
        raise MeasureError(f"rsa needs at least 3 examples (2 dissimilarities); got {layers_a[0].shape[0]}")
    vec_a = [_upper(make(x.to(torch.float64))) for x in layers_a]
    vec_b = vec_a if layers_b is None else [_upper(make(y.to(torch.float64))) for y in layers_b]
    prepare = _PREPARE[compare]
    if prepare is not None:
        pa = torch.stack([prepare(v) for v in vec_a])
        pb = pa if layers_b is None else torch.stack([prepare(v) for v in vec_b])
        return pa @ pb.T
    pairwise = _PAIRWISE[compare]
    out = torch.empty(len(vec_a), len(vec_b), dtype=torch.float64, device=vec_a[0].device)
    for i, u in enumerate(vec_a):
        for j, v in enumerate(vec_b):
            if layers_b is None and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = pairwise(u, v)
    return out


def rsa(x: Tensor, y: Tensor, *, rdm: str = "correlation", compare: str = "spearman") -> Tensor:
    """RSA: compare the dissimilarity structure of two representations of the same examples.

    Computes ``compare(upper(RDM(x)), upper(RDM(y)))``; see the module docstring for the RDM and
    comparison definitions (they reproduce rsatoolbox's numbers).

    Args:
        x: (n_examples, d_x), n_examples >= 3.
        y: (n_examples, d_y).
        rdm: "correlation", "cosine" or "euclidean".
        compare: "spearman", "pearson", "kendall_tau_b" (= "kendall"), "kendall_tau_a", "rho_a", "cosine".

    Returns:
        0-dim float64 tensor in [-1, 1].

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4
        >>> y = torch.tensor([[0.0], [2.0], [3.0]])  # squared distances 4, 9, 1
        >>> round(float(rsa(x, y, rdm="euclidean", compare="spearman")), 12)
        0.5
    """
    x, y = checked_pair(x, y, min_n=3, what="rsa")
    return rsa_matrix([x], [y], rdm=rdm, compare=compare)[0, 0]
