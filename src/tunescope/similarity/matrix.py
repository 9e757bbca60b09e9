"""Every layer pair in one call, with each layer's expensive work done once.

`MEASURES` maps a measure name to its pairwise function and to an all-pairs implementation that
prepares every layer once (a centered copy and Gram strips or cross-products for linear CKA, a Gram
matrix for RBF CKA, an RDM and its ranks for RSA, an SVD basis for the CCA measures, a normalized copy
for Procrustes) and then combines the prepared layers pair by pair, or in one matrix product where the
measure allows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tunescope.errors import MeasureError, UnknownNameError
from tunescope.similarity._linear import Space, cka_from_hsic, hsic_from_parts, linear_parts
from tunescope.similarity._validate import Layers, as_layers
from tunescope.similarity.cca import Subspace, pwcca, pwcca_pair, subspace, svcca, svcca_pair
from tunescope.similarity.cka import check_rbf_variance, gram_hsic_matrix, linear_cka, rbf_cka
from tunescope.similarity.kernels import rbf_gram
from tunescope.similarity.minibatch import MinibatchCKA, batch_slices, minibatch_cka
from tunescope.similarity.procrustes import normalized, procrustes, procrustes_pair
from tunescope.similarity.rsa import rsa, rsa_matrix

__all__ = ["Measure", "MEASURES", "cka_matrix"]

AllPairs = Callable[..., Tensor]
NAMES = ("reps_a", "reps_b")


@dataclass(frozen=True)
class Measure:
    """A similarity measure: its pairwise function, its all-pairs implementation, what it accepts.

    Attributes:
        name: registry key (DESIGN.md vocabulary).
        pairwise: ``f(x, y, **options) -> 0-dim tensor``.
        all_pairs: ``f(layers_a, layers_b_or_None, **options) -> (La, Lb)`` on checked layers.
        options: keyword options both accept.
        min_examples: fewest examples the measure is defined for.
        higher_is_similar: False for distances (procrustes).
    """

    name: str
    pairwise: Callable[..., Tensor]
    all_pairs: AllPairs
    options: frozenset[str]
    min_examples: int = 2
    higher_is_similar: bool = True


def _linear_all(
    xs: list[Tensor], ys: list[Tensor] | None, *, debiased: bool = False, space: Space = "auto"
) -> Tensor:
    parts = linear_parts(xs, ys, debiased=debiased, space=space, what="linear_cka", names=NAMES)
    return cka_from_hsic(
        *hsic_from_parts(parts, debiased=debiased), what="linear_cka", names=NAMES, bounded=not debiased
    )


def _rbf_all(
    xs: list[Tensor], ys: list[Tensor] | None, *, debiased: bool = False, sigma: float = 0.8
) -> Tensor:
    check_rbf_variance(xs, NAMES[0], "rbf_cka")
    if ys is not None:
        check_rbf_variance(ys, NAMES[1], "rbf_cka")
    grams_b = None if ys is None else [rbf_gram(y, sigma) for y in ys]
    h = gram_hsic_matrix([rbf_gram(x, sigma) for x in xs], grams_b, debiased=debiased)
    return cka_from_hsic(*h, what="rbf_cka", names=NAMES, bounded=not debiased)


def _minibatch_all(
    xs: list[Tensor],
    ys: list[Tensor] | None,
    *,
    batch_size: int = 256,
    kernel: str = "linear",
    sigma: float = 0.8,
) -> Tensor:
    if batch_size < 4:
        raise MeasureError(f"batch_size must be >= 4 (unbiased HSIC); got {batch_size}")
    acc = MinibatchCKA(kernel=kernel, sigma=sigma)  # type: ignore[arg-type]
    for rows in batch_slices(xs[0].shape[0], batch_size):
        acc.update([x[rows] for x in xs], None if ys is None else [y[rows] for y in ys])
    return acc.compute()


def _rsa_all(
    xs: list[Tensor], ys: list[Tensor] | None, *, rdm: str = "correlation", compare: str = "spearman"
) -> Tensor:
    return rsa_matrix(xs, ys, rdm=rdm, compare=compare)


def _pairs(
    prepared_a: Sequence[Any],
    prepared_b: Sequence[Any] | None,
    pair: Callable[[Any, Any], Tensor],
    symmetric: bool,
) -> Tensor:
    """Fill a (La, Lb) matrix from prepared layers; within-model symmetric measures fill one triangle."""
    rows, cols = prepared_a, prepared_a if prepared_b is None else prepared_b
    out = torch.empty(len(rows), len(cols), dtype=torch.float64)
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            out[i, j] = out[j, i] if prepared_b is None and symmetric and j < i else pair(a, b)
    return out


def _subspaces(layers: list[Tensor] | None, side: int, **kwargs: Any) -> list[Subspace] | None:
    if layers is None:
        return None
    return [subspace(x, name=f"layer {i} of {NAMES[side]}", **kwargs) for i, x in enumerate(layers)]


def _svcca_all(
    xs: list[Tensor], ys: list[Tensor] | None, *, variance: float = 0.99, n_components: int | None = None
) -> Tensor:
    sa = _subspaces(xs, 0, variance=variance, n_components=n_components)
    assert sa is not None
    sb = _subspaces(ys, 1, variance=variance, n_components=n_components)
    return _pairs(sa, sb, svcca_pair, symmetric=True).to(xs[0].device)


def _pwcca_all(xs: list[Tensor], ys: list[Tensor] | None, *, n_components: int | None = None) -> Tensor:
    sa = _subspaces(xs, 0, n_components=n_components)
    assert sa is not None
    return _pairs(sa, _subspaces(ys, 1, n_components=n_components), pwcca_pair, symmetric=False).to(
        xs[0].device
    )


def _procrustes_all(xs: list[Tensor], ys: list[Tensor] | None) -> Tensor:
    na = [normalized(x, f"layer {i} of reps_a") for i, x in enumerate(xs)]
    nb = None if ys is None else [normalized(y, f"layer {i} of reps_b") for i, y in enumerate(ys)]
    return _pairs(na, nb, procrustes_pair, symmetric=True).to(xs[0].device)


#: measure name -> `Measure`
MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("linear_cka", linear_cka, _linear_all, frozenset({"debiased", "space"})),
        Measure("rbf_cka", rbf_cka, _rbf_all, frozenset({"debiased", "sigma"})),
        Measure(
            "minibatch_cka", minibatch_cka, _minibatch_all, frozenset({"batch_size", "kernel", "sigma"}), 4
        ),
        Measure("rsa", rsa, _rsa_all, frozenset({"rdm", "compare"}), 3),
        Measure("svcca", svcca, _svcca_all, frozenset({"variance", "n_components"})),
        Measure("pwcca", pwcca, _pwcca_all, frozenset({"n_components"})),
        Measure("procrustes", procrustes, _procrustes_all, frozenset(), higher_is_similar=False),
    )
}


def get_measure(name: str) -> Measure:
    """Look a measure up by name; an unknown name raises `UnknownNameError` listing the valid ones."""
    if name not in MEASURES:
        raise UnknownNameError("measure", name, MEASURES)
    return MEASURES[name]


def cka_matrix(
    reps_a: Layers,
    reps_b: Layers | None = None,
    measure: str = "linear_cka",
    *,
    debiased: bool = False,
    **options: Any,
) -> Tensor:
    """Similarity between every layer of ``reps_a`` and every layer of ``reps_b`` in one call.

    Each layer's expensive work is done once, never once per pair. For linear CKA the work is done in
    whichever exact space is cheaper (``space="auto"``): **sample space**, Gram matrices ``X_l X_l^T``
    (about ``n^2 (D_A + D_B) / 2`` multiply-adds, strips of the upper triangle) and their pairwise inner
    products; or **feature space**, cross-products ``X_a^T Y_b`` (about ``n D_A D_B``), where
    ``D = sum_l d_l``. Sample space wins when n is below roughly the total feature dimension. Products
    run in the input dtype on centered data and are summed in float64 (float32 inputs agree with a
    float64 computation to ~1e-7).

    Args:
        reps_a: per-layer (n_examples, d_l) tensors of model A: a sequence, a mapping (its values in
            order), or a stacked (n_layers, n_examples, d) tensor.
        reps_b: model B's layers on the same examples, or None for the within-model matrix (symmetric
            for every measure but pwcca).
        measure: a key of `MEASURES`: "linear_cka", "rbf_cka", "minibatch_cka", "rsa", "svcca",
            "pwcca", "procrustes".
        debiased: unbiased HSIC estimator (linear_cka and rbf_cka only).
        **options: the measure's options: ``space`` ("auto" | "sample" | "feature", linear_cka),
            ``sigma`` (rbf_cka, minibatch_cka), ``batch_size``/``kernel`` (minibatch_cka),
            ``rdm``/``compare`` (rsa), ``variance``/``n_components`` (svcca, pwcca).

    Returns:
        (La, Lb) float64 tensor on the inputs' device.

    Raises:
        UnknownNameError: unknown measure.
        MeasureError: bad input in any layer (nothing is returned), or an option the measure does not take.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 8, generator=g)
        >>> layers = [x, x @ torch.randn(8, 8, generator=g), torch.randn(64, 8, generator=g)]
        >>> m = cka_matrix(layers)
        >>> m.shape, bool(torch.allclose(m, m.T)), round(float(m[0, 0]), 12)
        (torch.Size([3, 3]), True, 1.0)
    """
    spec = get_measure(measure)
    if debiased:
        if "debiased" not in spec.options:
            raise MeasureError(f"debiased=True applies to linear_cka and rbf_cka, not {measure}")
        options["debiased"] = True
    unknown = set(options) - spec.options
    if unknown:
        accepted = ", ".join(sorted(spec.options)) or "none"
        raise MeasureError(f"{measure} does not take option(s) {sorted(unknown)}; it accepts: {accepted}")
    min_n = max(spec.min_examples, 4 if debiased else 2)
    layers_a = as_layers(reps_a, "reps_a")
    layers_b = None if reps_b is None else as_layers(reps_b, "reps_b")
    n = layers_a[0].shape[0]
    if layers_b is not None:
        if layers_b[0].shape[0] != n:
            raise MeasureError(
                f"reps_a and reps_b must hold the same examples; got {n} and {layers_b[0].shape[0]}"
            )
        if layers_b[0].device != layers_a[0].device:
            raise MeasureError(f"reps_a is on {layers_a[0].device} and reps_b on {layers_b[0].device}")
    if n < min_n:
        raise MeasureError(f"{measure} needs at least {min_n} examples; got {n}")
    return spec.all_pairs(layers_a, layers_b, **options)
