"""RSA: equal to rsatoolbox's numbers, to the float64 reference and scipy, and on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunescope.errors import MeasureError
from tunescope.similarity import COMPARISONS, RDM_METHODS, cka_matrix, rdm, rsa
from tunescope.testing import reference as ref

pytestmark = pytest.mark.usefixtures("one_thread")

# our compare name -> rsatoolbox.rdm.compare(method=...)
RSATOOLBOX_COMPARE = {
    "spearman": "spearman",
    "pearson": "corr",
    "kendall": "kendall",
    "kendall_tau_b": "tau-b",
    "kendall_tau_a": "tau-a",
    "rho_a": "rho-a",
    "cosine": "cosine",
}


def data(seed: int, n: int = 14, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 9, generator=g, dtype=torch.float64)
    y = x[:, :6] @ torch.randn(6, 5, generator=g, dtype=torch.float64) + 0.8 * torch.randn(
        n, 5, generator=g, dtype=torch.float64
    )
    if ties:  # integer features on a few levels: many tied dissimilarities
        x, y = x.round().clamp(-1, 1), y.round().clamp(-1, 1)
    return x, y


def same(a: torch.Tensor | float, b: object) -> None:
    a64, b64 = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    torch.testing.assert_close(a64, b64, rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["correlation", "euclidean"])
@pytest.mark.parametrize("compare", list(RSATOOLBOX_COMPARE))
@pytest.mark.parametrize("ties", [False, True])
def test_rsa_equals_rsatoolbox(seed: int, method: str, compare: str, ties: bool) -> None:
    rsatoolbox = pytest.importorskip("rsatoolbox")
    if ties and method == "correlation":
        pytest.skip("which correlation distances tie exactly depends on rounding; integer data tie exactly")
    x, y = data(seed, ties=ties)
    rdm_x = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x.numpy()), method=method)
    rdm_y = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(y.numpy()), method=method)
    same(rdm(x, method=method)[np.triu_indices(len(x), 1)], rdm_x.get_vectors()[0])
    expected = rsatoolbox.rdm.compare(rdm_x, rdm_y, method=RSATOOLBOX_COMPARE[compare])[0, 0]
    same(rsa(x, y, rdm=method, compare=compare), expected)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", list(RDM_METHODS))
def test_rdm_equals_reference_and_scipy(seed: int, method: str) -> None:
    from scipy.spatial.distance import pdist, squareform

    x, _ = data(seed)
    same(rdm(x, method=method), ref.rdm(x, method))
    scipy_metric = {"correlation": "correlation", "cosine": "cosine", "euclidean": "sqeuclidean"}[method]
    expected = squareform(pdist(x.numpy(), metric=scipy_metric))
    same(rdm(x, method=method), expected / (x.shape[1] if method == "euclidean" else 1))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", list(RDM_METHODS))
@pytest.mark.parametrize("compare", list(COMPARISONS))
def test_rsa_equals_reference(seed: int, method: str, compare: str) -> None:
    x, y = data(seed, n=10)
    same(rsa(x, y, rdm=method, compare=compare), ref.rsa(x, y, method, compare))
    same(
        rsa(x.float(), y.float(), rdm=method, compare=compare), ref.rsa(x.float(), y.float(), method, compare)
    )


def test_rsa_tau_a_with_ties_equals_reference_loop() -> None:
    x, y = data(3, n=12, ties=True)
    same(rsa(x, y, rdm="euclidean", compare="kendall_tau_a"), ref.rsa(x, y, "euclidean", "kendall_tau_a"))
    assert float(rsa(x, y, rdm="euclidean", compare="kendall_tau_a")) < float(
        rsa(x, y, rdm="euclidean", compare="kendall_tau_b")
    )


def test_hand_worked_rsa() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0]])  # squared distances (0,1)=1, (0,2)=9, (1,2)=4
    y = torch.tensor([[0.0], [2.0], [3.0]])  # 4, 9, 1
    same(rsa(x, y, rdm="euclidean", compare="spearman"), 0.5)
    same(rsa(x, y, rdm="euclidean", compare="kendall_tau_b"), 1 / 3)
    # pearson of (1, 9, 4) and (4, 9, 1): deviations from 14/3 are (-11, 13, -2)/3 and (-2, 13, -11)/3
    same(rsa(x, y, rdm="euclidean", compare="pearson"), (22 + 169 + 22) / 294)
    same(rsa(x + 1, 2 * x + 2, rdm="euclidean"), 1.0)  # distances scale by 4: same ranks


def test_rsa_matrix_equals_pairwise() -> None:
    g = torch.Generator().manual_seed(5)
    a = [torch.randn(12, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    for compare in ("spearman", "kendall"):
        expected = torch.tensor(
            [[float(rsa(p, q, compare=compare)) for q in a] for p in a], dtype=torch.float64
        )
        same(cka_matrix(a, measure="rsa", compare=compare), expected)


def test_rsa_errors() -> None:
    x, y = data(0)
    with pytest.raises(MeasureError, match="at least 3"):
        rsa(x[:2], y[:2])
    zero_row = x.clone()
    zero_row[2] = 0.0
    with pytest.raises(MeasureError, match="zero length"):
        rsa(zero_row, y, rdm="cosine")
    flat = x.clone()
    flat[4] = 1.5
    with pytest.raises(MeasureError, match="zero length"):
        rsa(flat, y, rdm="correlation")
    equidistant = torch.eye(5, dtype=torch.float64)
    for compare in ("pearson", "spearman", "kendall"):
        with pytest.raises(MeasureError, match="all dissimilarities equal"):
            rsa(equidistant, torch.randn(5, 3, dtype=torch.float64), rdm="euclidean", compare=compare)
