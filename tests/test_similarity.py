"""tunescope.similarity against the float64 references, on hand-worked cases, and on bad input."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from tunescope.errors import MeasureError, UnknownNameError
from tunescope.similarity import (
    MEASURES,
    MinibatchCKA,
    StreamingCKA,
    bootstrap_ci,
    bootstrap_linear_cka,
    cka_matrix,
    hsic,
    linear_cka,
    linear_gram,
    minibatch_cka,
    procrustes,
    pwcca,
    rbf_cka,
    rbf_gram,
    rsa,
    svcca,
)
from tunescope.testing import reference as ref

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = {"rtol": 0.0, "atol": 1e-10}
F32 = {"rtol": 0.0, "atol": 1e-6}


def layers(seed: int, n: int = 60, dims: tuple[int, ...] = (12, 12, 9), dtype: torch.dtype = torch.float64):
    """Related layers with a large shared mean (as in transformer activations) and per-layer noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 6, generator=g, dtype=torch.float64)
    out = []
    for i, d in enumerate(dims):
        mix = torch.randn(6, d, generator=g, dtype=torch.float64)
        noise = (0.3 + 0.3 * i) * torch.randn(n, d, generator=g, dtype=torch.float64)
        out.append((base @ mix + noise + 20.0).to(dtype))
    return out


def close(actual: torch.Tensor | float, expected: float | np.ndarray, tol: dict[str, float]) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=tol["rtol"],
        atol=tol["atol"],
    )


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, F64), (torch.float32, F32)])
def test_linear_cka_matches_reference(debiased: bool, dtype: torch.dtype, tol: dict[str, float]) -> None:
    x, y, _ = layers(0, dtype=dtype)
    out = linear_cka(x, y, debiased=debiased)
    assert out.dim() == 0 and out.dtype == torch.float64
    close(out, ref.linear_cka(x, y, debiased), tol)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, F64), (torch.float32, F32)])
def test_rbf_cka_matches_reference(debiased: bool, dtype: torch.dtype, tol: dict[str, float]) -> None:
    x, y, _ = layers(1, n=30, dtype=dtype)
    for sigma in (0.4, 0.8):
        close(rbf_cka(x, y, sigma=sigma, debiased=debiased), ref.rbf_cka(x, y, sigma, debiased), tol)


def test_hsic_and_grams_match_reference() -> None:
    x, y, _ = layers(2, n=25)
    k, l = linear_gram(x), linear_gram(y)  # noqa: E741
    relative = {"rtol": 1e-10, "atol": 0.0}  # HSIC is not scale-free: compare relatively
    close(hsic(k, l), ref.hsic_biased(k.numpy(), l.numpy()), relative)
    close(hsic(k, l, debiased=True), ref.hsic_unbiased(k.numpy(), l.numpy()), relative)
    close(rbf_gram(x, 0.5), ref.rbf_gram(x, 0.5), F64)


@pytest.mark.parametrize("space", ["sample", "feature", "auto"])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, F64), (torch.float32, F32)])
def test_cka_matrix_matches_reference(
    space: str, debiased: bool, dtype: torch.dtype, tol: dict[str, float]
) -> None:
    a, b = layers(3, dtype=dtype), layers(4, dims=(7, 15), dtype=dtype)
    close(cka_matrix(a, b, debiased=debiased, space=space), ref.cka_matrix(a, b, debiased), tol)
    close(cka_matrix(a, debiased=debiased, space=space), ref.cka_matrix(a, None, debiased), tol)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, F64), (torch.float32, F32)])
@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_matches_reference(dtype: torch.dtype, tol: dict[str, float], debiased: bool) -> None:
    a, b = layers(5, n=80, dtype=dtype), layers(6, n=80, dims=(5, 11), dtype=dtype)
    cross, within = StreamingCKA(debiased=debiased), StreamingCKA(debiased=debiased)
    for rows in (slice(0, 7), slice(7, 40), slice(40, 80)):
        cross.update([x[rows] for x in a], [y[rows] for y in b])
        within.update({f"layer.{i}": x[rows] for i, x in enumerate(a)})
    assert cross.n_examples == 80
    close(cross.compute(), ref.cka_matrix(a, b, debiased), tol)
    close(within.compute(), ref.cka_matrix(a, None, debiased), tol)


@pytest.mark.parametrize("batch_size", [16, 25])
def test_minibatch_matches_reference(batch_size: int) -> None:
    x, y, _ = layers(7, n=82)
    close(minibatch_cka(x, y, batch_size=batch_size), ref.minibatch_cka(x, y, batch_size), F64)
    x32, y32 = x.float(), y.float()
    close(minibatch_cka(x32, y32, batch_size=batch_size), ref.minibatch_cka(x32, y32, batch_size), F32)
    close(
        cka_matrix([x], [y], "minibatch_cka", batch_size=batch_size)[0, 0],
        ref.minibatch_cka(x, y, batch_size),
        F64,
    )


def test_minibatch_rbf_is_mean_of_unbiased_hsic() -> None:
    x, y, _ = layers(8, n=40)
    hs = []
    for rows in (slice(0, 20), slice(20, 40)):
        k, l = ref.rbf_gram(x[rows], 0.8), ref.rbf_gram(y[rows], 0.8)  # noqa: E741
        hs.append((ref.hsic_unbiased(k, l), ref.hsic_unbiased(k, k), ref.hsic_unbiased(l, l)))
    xy, xx, yy = (sum(h[i] for h in hs) for i in range(3))
    close(minibatch_cka(x, y, batch_size=20, kernel="rbf"), xy / math.sqrt(xx * yy), F64)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, F64), (torch.float32, F32)])
def test_cca_and_procrustes_match_reference(dtype: torch.dtype, tol: dict[str, float]) -> None:
    x, y, z = layers(9, n=120, dims=(8, 6, 10), dtype=dtype)
    close(svcca(x, y, variance=0.9), ref.svcca(x, y, variance=0.9), tol)
    close(svcca(x, z, n_components=4), ref.svcca(x, z, variance=None, n_components=4), tol)
    close(pwcca(x, y), ref.pwcca(x, y), tol)
    close(pwcca(z, x), ref.pwcca(z, x), tol)
    close(procrustes(x, y), ref.procrustes(x, y), tol)
    close(procrustes(y, z), ref.procrustes(y, z), tol)


def test_procrustes_few_examples_matches_reference() -> None:
    x, y, _ = layers(10, n=12, dims=(40, 30, 3))  # n < d: the triangular-factor path
    close(procrustes(x, y), ref.procrustes(x, y), F64)


def test_canonical_correlations_match_sklearn() -> None:
    from sklearn.cross_decomposition import CCA

    x, y, _ = layers(11, n=300, dims=(4, 3, 3))
    from tunescope.similarity.cca import canonical, subspace

    xs, ys = (
        CCA(n_components=1, max_iter=500, tol=1e-10).fit(x.numpy(), y.numpy()).transform(x.numpy(), y.numpy())
    )
    first = abs(np.corrcoef(xs[:, 0], ys[:, 0])[0, 1])
    close(canonical(subspace(x), subspace(y))[0][0], first, {"rtol": 0, "atol": 1e-6})
    close(ref.canonical_correlations(x, y)[0][0], first, {"rtol": 0, "atol": 1e-6})


def test_other_measures_in_matrix_match_pairwise() -> None:
    a = layers(12, n=50, dims=(6, 6, 5))
    b = layers(13, n=50, dims=(4, 7))
    cases: list[tuple[str, dict[str, Any]]] = [
        ("rbf_cka", {"sigma": 0.6}),
        ("rsa", {"rdm": "euclidean", "compare": "pearson"}),
        ("rsa", {"rdm": "correlation", "compare": "kendall_tau_a"}),
        ("svcca", {"n_components": 3}),
        ("pwcca", {}),
        ("procrustes", {}),
    ]
    for measure, opts in cases:
        pair = MEASURES[measure].pairwise
        expected = torch.tensor([[float(pair(x, y, **opts)) for y in b] for x in a], dtype=torch.float64)
        close(cka_matrix(a, b, measure, **opts), expected.numpy(), F64)
        within = torch.tensor([[float(pair(x, y, **opts)) for y in a] for x in a], dtype=torch.float64)
        close(cka_matrix(a, None, measure, **opts), within.numpy(), F64)


# ---------------------------------------------------------------- hand-worked cases


def test_hand_worked_linear_cka() -> None:
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    # one feature each: CKA is the squared correlation; deviations (-1.5, -.5, .5, 1.5) and
    # (-6.5, -3.5, 1.5, 8.5): 25^2 / (5 * 129) = 125/129
    close(linear_cka(x, x**2), 125 / 129, F64)
    # uncorrelated centered features
    close(
        linear_cka(
            torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]), torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
        ),
        0.0,
        F64,
    )
    # a square rotated by 45 degrees and scaled
    sq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    close(linear_cka(sq, 3 * torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])), 1.0, F64)
    # stretching one axis by 2: X^T X = diag(2, 2), Y^T Y = diag(2, 8), X^T Y = diag(2, 4);
    # CKA = (4 + 16) / (sqrt(8) sqrt(68)) = 5 / sqrt(34)
    close(linear_cka(sq, sq * torch.tensor([1.0, 2.0])), 5 / math.sqrt(34), F64)


def test_hand_worked_hsic() -> None:
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    close(hsic(linear_gram(x), linear_gram(x)), (5 / 3) ** 2, F64)  # (sum sq dev / (n - 1))^2


def test_hand_worked_rsa_procrustes_cca() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0]])
    y = torch.tensor([[0.0], [2.0], [3.0]])
    close(rsa(x, y, rdm="euclidean", compare="spearman"), 0.5, F64)  # ranks (1,3,2) vs (2,3,1)
    close(rsa(x, y, rdm="euclidean", compare="kendall_tau_a"), 1 / 3, F64)  # 2 concordant, 1 discordant
    sq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    close(procrustes(sq, -sq), 0.0, F64)  # a reflection is orthogonal
    # squares with different aspect ratios: A = diag-ish, ||A^T B||_* = (1 + 2) / sqrt(2 * 2 * (1 + 4) / 2)
    close(procrustes(sq, sq * torch.tensor([1.0, 2.0])), 2 - 2 * 3 / math.sqrt(10), F64)
    t = torch.arange(10.0)[:, None]
    close(svcca(torch.cat([t, t**2], 1), torch.cat([t**2, -t], 1), variance=1.0), 1.0, F64)


def test_cka_matrix_accepts_mapping_and_stacked() -> None:
    a = layers(14, dims=(5, 5))
    expected = cka_matrix(a)
    close(cka_matrix({"layer.0": a[0], "layer.1": a[1]}), expected.numpy(), F64)
    close(cka_matrix(torch.stack(a)), expected.numpy(), F64)


def test_bootstrap_ci_is_deterministic_and_brackets() -> None:
    x, y, _ = layers(15, n=40)
    ci = bootstrap_ci(linear_cka, x, y, n_boot=30, seed=3)
    again = bootstrap_ci("linear_cka", x, y, n_boot=30, seed=3)
    assert ci.low == again.low and ci.high == again.high and ci.n_boot == 30
    assert ci.low <= ci.high
    close(ci.estimate, ref.linear_cka(x, y), F64)
    q = np.quantile(ci.samples.numpy(), [0.025, 0.975])
    close(torch.tensor([ci.low, ci.high], dtype=torch.float64), q, F64)
    deb = bootstrap_ci(partial(linear_cka, debiased=True), x, y, n_boot=10, level=0.5)
    assert deb.level == 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_linear_cka_from_grams_equals_resampling_the_features(seed: int) -> None:
    x, y, z = layers(20 + seed, n=40)
    estimate, samples = bootstrap_linear_cka([x, y, z], [(0, 1), (2, 1), (1, 1)], n_boot=30, seed=seed)
    for k, (a, b) in enumerate([(x, y), (z, y)]):
        ci = bootstrap_ci(linear_cka, a, b, n_boot=30, seed=seed)  # recomputes CKA on resampled rows
        close(samples[:, k], ci.samples.numpy(), F64)
        close(estimate[k], ref.linear_cka(a, b), F64)
    close(samples[:, 2], np.ones(30), F64)
    # the linear bootstrap: same estimate; resamples differ by the O(1/n) terms it leaves out
    x, y, z = layers(30 + seed, n=400)
    estimate, samples = bootstrap_linear_cka([x, y], [(0, 1)], n_boot=200, seed=seed)
    linear_estimate, linear = bootstrap_linear_cka([x, y], [(0, 1)], n_boot=200, seed=seed, exact=False)
    close(linear_estimate[0], float(estimate[0]), F64)
    assert float((linear - samples).abs().max()) < 0.02
    assert 0.8 < float(linear.std() / samples.std()) < 1.25
    again = bootstrap_linear_cka([x, y], [(0, 1)], n_boot=200, seed=seed, exact=False)[1]
    assert torch.equal(again, linear)
    with pytest.raises(MeasureError, match="outside"):
        bootstrap_linear_cka([x, y], [(0, 2)], n_boot=5)


# ---------------------------------------------------------------- bad input: one clear MeasureError


def pair_functions():
    return [
        partial(linear_cka),
        partial(linear_cka, debiased=True),
        partial(rbf_cka),
        partial(rsa),
        partial(svcca, n_components=1),
        partial(pwcca, n_components=1),
        partial(procrustes),
        partial(minibatch_cka),
    ]


@pytest.mark.parametrize("fn", pair_functions(), ids=lambda f: f"{f.func.__name__}{sorted(f.keywords)}")
def test_bad_input_raises_measure_error(fn) -> None:
    x, y, _ = layers(16, n=20, dims=(4, 4, 4))
    with pytest.raises(MeasureError, match="same"):
        fn(x[:10], y)
    with pytest.raises(MeasureError, match="at least"):
        fn(x[:1], y[:1])
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(MeasureError, match="NaN"):
        fn(bad, y)
    bad[3, 1] = float("inf")
    with pytest.raises(MeasureError, match="NaN or infinite"):
        fn(bad, y)
    with pytest.raises(MeasureError, match="2-D"):
        fn(x[:, 0], y)
    with pytest.raises(MeasureError, match="2-D"):
        fn(x[None], y)


@pytest.mark.parametrize(
    "fn",
    [linear_cka, partial(linear_cka, debiased=True), rbf_cka, svcca, pwcca, procrustes, minibatch_cka],
    ids=["linear", "linear-debiased", "rbf", "svcca", "pwcca", "procrustes", "minibatch"],
)
def test_zero_variance_is_refused(fn) -> None:
    x, y, _ = layers(17, n=20, dims=(4, 4, 4))
    for constant in (torch.full((20, 4), 3.7), torch.full((20, 4), 0.1, dtype=torch.float64)):
        with pytest.raises(MeasureError, match="zero variance|undefined"):
            fn(constant, y)
        with pytest.raises(MeasureError, match="zero variance|undefined"):
            fn(x, constant)


def test_debiased_needs_four_examples() -> None:
    x, y, _ = layers(18, n=3)
    assert 0 <= float(linear_cka(x, y)) <= 1
    with pytest.raises(MeasureError, match="at least 4"):
        linear_cka(x, y, debiased=True)
    with pytest.raises(MeasureError, match="at least 4"):
        rbf_cka(x, y, debiased=True)
    with pytest.raises(MeasureError, match="at least 4"):
        cka_matrix([x], [y], debiased=True)


def test_non_tensor_and_complex_refused() -> None:
    x, y, _ = layers(19, n=10)
    with pytest.raises(MeasureError, match="torch.Tensor"):
        linear_cka(x.numpy(), y)  # type: ignore[arg-type]
    with pytest.raises(MeasureError, match="complex"):
        linear_cka(x.to(torch.complex128), y)


def test_cka_matrix_errors_leave_nothing_partial() -> None:
    a = layers(20, n=30, dims=(4, 4, 4))
    bad = [a[0], a[1].clone(), a[2]]
    bad[1][0, 0] = float("nan")
    with pytest.raises(MeasureError, match=r"reps_a\[1\]"):
        cka_matrix(bad)
    with pytest.raises(MeasureError, match="same number of examples"):
        cka_matrix([a[0], a[1][:20]])
    with pytest.raises(
        MeasureError, match="layer 2 of reps_b.*zero variance|zero variance.*layer 2 of reps_b"
    ):
        cka_matrix(a, [a[0], a[1], torch.ones(30, 4)])
    with pytest.raises(MeasureError, match="same examples"):
        cka_matrix(a, [x[:20] for x in a])
    with pytest.raises(MeasureError, match="no layers"):
        cka_matrix([])
    with pytest.raises(UnknownNameError, match="linear_cka.*procrustes.*rsa"):
        cka_matrix(a, measure="cka_linear")
    with pytest.raises(MeasureError, match="does not take"):
        cka_matrix(a, measure="rsa", sigma=0.3)
    with pytest.raises(MeasureError, match="debiased"):
        cka_matrix(a, measure="procrustes", debiased=True)
    with pytest.raises(MeasureError, match="space"):
        cka_matrix(a, space="diagonal")


def test_unknown_names_list_the_valid_ones() -> None:
    x, y, _ = layers(21, n=10)
    with pytest.raises(UnknownNameError, match="correlation, cosine, euclidean"):
        rsa(x, y, rdm="mahalanobis")
    with pytest.raises(UnknownNameError, match="kendall_tau_a.*spearman"):
        rsa(x, y, compare="tau-a")
    with pytest.raises(UnknownNameError, match="linear, rbf"):
        MinibatchCKA(kernel="poly")  # type: ignore[arg-type]


def test_svcca_pwcca_refuse_too_few_examples() -> None:
    g = torch.Generator().manual_seed(22)
    x, y = torch.randn(20, 30, generator=g), torch.randn(20, 30, generator=g)  # n < d: spans must intersect
    with pytest.raises(MeasureError, match="n_components <= 9"):
        svcca(x, y)
    with pytest.raises(MeasureError, match="forces canonical correlations of 1"):
        pwcca(x, y)
    assert 0 < float(svcca(x, y, n_components=5)) < 1
    assert 0 < float(pwcca(x, y, n_components=5)) <= 1


def test_rbf_duplicate_examples_refused() -> None:
    x = torch.zeros(10, 3)
    x[0, 0] = 1.0
    x[1, 1] = 1.0
    with pytest.raises(MeasureError, match="median pairwise distance is zero"):
        rbf_cka(x, torch.randn(10, 3))
    with pytest.raises(MeasureError, match="sigma"):
        rbf_cka(torch.randn(10, 3), torch.randn(10, 3), sigma=0.0)


def test_accumulator_errors() -> None:
    a = layers(23, n=30, dims=(4, 4))
    acc = StreamingCKA().update([x[:10] for x in a])
    bad = [a[0][10:20].clone(), a[1][10:20]]
    bad[0][0, 0] = float("inf")
    before = acc.compute()
    with pytest.raises(MeasureError, match="NaN or infinite"):
        acc.update(bad)
    with pytest.raises(MeasureError, match="widths"):
        acc.update([a[0][10:20]])
    with pytest.raises(MeasureError, match="widths"):
        acc.update([x[10:20] for x in a], [x[10:20] for x in a])
    assert acc.n_examples == 10
    close(acc.compute(), before.numpy(), F64)
    with pytest.raises(MeasureError, match="at least 2"):
        StreamingCKA().compute()
    with pytest.raises(MeasureError, match="at least 4"):
        StreamingCKA(debiased=True).update([x[:3] for x in a]).compute()
    with pytest.raises(MeasureError, match="zero variance"):
        StreamingCKA().update([a[0][:10], torch.ones(10, 4)]).compute()
    with pytest.raises(MeasureError, match="different layouts"):
        acc.merge(StreamingCKA(debiased=True).update([x[:10] for x in a]))
    with pytest.raises(MeasureError, match="same examples"):
        StreamingCKA().update([a[0][:10]], [a[1][:9]])
    mb = MinibatchCKA()
    with pytest.raises(MeasureError, match="at least 4"):
        mb.update([a[0][:3]])
    with pytest.raises(MeasureError, match="before any update"):
        mb.compute()
    with pytest.raises(MeasureError, match="batch_size"):
        minibatch_cka(a[0], a[1], batch_size=3)


def test_centered_bootstrap_of_cka_holds_its_estimate_in_high_dimension():
    """Biased CKA rises with a resample's repeated examples; centring removes that bias, and the exact and
    linear bootstraps then agree (n = 300, d = 96)."""
    from tunescope.similarity import bootstrap_linear_cka

    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(300, 96, generator=g, dtype=torch.float64)]
    layers.append(layers[0] + 0.6 * torch.randn(300, 96, generator=g, dtype=torch.float64))
    est, raw = bootstrap_linear_cka(layers, [(0, 1)], n_boot=300, seed=1, exact=True)
    _, exact = bootstrap_linear_cka(layers, [(0, 1)], n_boot=300, seed=1, exact=True, centered=True)
    _, linear = bootstrap_linear_cka(layers, [(0, 1)], n_boot=300, seed=1, exact=False, centered=True)
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    raw_ci, exact_ci, linear_ci = (torch.quantile(s[:, 0], q) for s in (raw, exact, linear))
    assert raw_ci[0] > est[0]  # the raw percentile interval misses its own estimate
    assert exact_ci[0] < est[0] < exact_ci[1] and linear_ci[0] < est[0] < linear_ci[1]
    torch.testing.assert_close(exact_ci, linear_ci, atol=0.01, rtol=0)
    _, auto = bootstrap_linear_cka(layers, [(0, 1)], n_boot=300, seed=1, exact=None, centered=True)
    torch.testing.assert_close(auto, exact)  # 300 examples: exact
