"""Properties of the similarity measures on several seeds: identity, symmetry, invariances, bounds,
streaming == in-memory, merge == union, all-pairs == per-pair loop in both spaces."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch

from tunescope.similarity import (
    MinibatchCKA,
    StreamingCKA,
    cka_matrix,
    linear_cka,
    minibatch_cka,
    procrustes,
    rbf_cka,
    svcca,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = [0, 1, 2]


EXACT = {"rtol": 0.0, "atol": 1e-10}
FLOAT32 = {"rtol": 0.0, "atol": 1e-6}
MEASURES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_cka,
    "linear-debiased": partial(linear_cka, debiased=True),
    "rbf": rbf_cka,
    "rbf-debiased": partial(rbf_cka, debiased=True),
}


def data(seed: int, n: int = 48, d_x: int = 10, d_y: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_x, generator=g, dtype=torch.float64) * torch.linspace(
        0.5, 3.0, d_x, dtype=torch.float64
    )
    y = x[:, :d_y] @ torch.randn(d_y, d_y, generator=g, dtype=torch.float64) + torch.randn(
        n, d_y, generator=g, dtype=torch.float64
    )
    return x + 5.0, y - 3.0


def orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 100)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def same(a: torch.Tensor | float, b: torch.Tensor | float, tol: dict[str, float] = EXACT) -> None:
    a64, b64 = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    torch.testing.assert_close(a64, b64, rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(MEASURES))
def test_identity_symmetry_invariances(seed: int, name: str) -> None:
    fn = MEASURES[name]
    x, y = data(seed)
    value = fn(x, y)
    same(fn(x, x), 1.0)
    same(fn(y, x), value)
    same(fn(x @ orthogonal(x.shape[1], seed), y), value)
    same(fn(x, y @ orthogonal(y.shape[1], seed)), value)
    same(fn(3.5 * x, y / 7.0), value)
    same(fn(x + 100.0, y), value)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["linear", "rbf"])
def test_biased_cka_is_in_unit_interval(seed: int, name: str) -> None:
    x, y = data(seed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for other in (y, noise, -x):
        assert 0.0 <= float(MEASURES[name](x, other)) <= 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_cka_not_invariant_to_general_linear_maps(seed: int) -> None:
    x, _ = data(seed)
    stretch = torch.diag(torch.logspace(-1, 1, x.shape[1], dtype=torch.float64))
    invertible = orthogonal(x.shape[1], seed) @ stretch @ orthogonal(x.shape[1], seed + 1)
    assert float(linear_cka(x, x @ invertible)) < 0.9
    assert float(svcca(x, x @ invertible, variance=1.0)) == pytest.approx(1.0, abs=1e-10)  # CCA is invariant


@pytest.mark.parametrize("seed", SEEDS)
def test_procrustes_properties(seed: int) -> None:
    x, y = data(seed)
    same(procrustes(x, 2 * x @ orthogonal(x.shape[1], seed) + 1), 0.0)
    same(procrustes(x, y), procrustes(y, x))
    assert 0.0 < float(procrustes(x, y)) <= 2.0


def stack(seed: int, n: int, dims: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 5, generator=g, dtype=torch.float64)
    out = []
    for d in dims:
        x = base @ torch.randn(5, d, generator=g, dtype=torch.float64) + torch.randn(
            n, d, generator=g, dtype=torch.float64
        )
        out.append((x + 10 * torch.rand(d, generator=g, dtype=torch.float64)).to(dtype))
    return out


def per_pair(a: list[torch.Tensor], b: list[torch.Tensor], debiased: bool) -> torch.Tensor:
    return torch.stack([torch.stack([linear_cka(x, y, debiased=debiased) for y in b]) for x in a])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("space", ["sample", "feature"])
def test_cka_matrix_equals_per_pair_loop(seed: int, debiased: bool, space: str) -> None:
    a, b = stack(seed, 40, [6, 9, 6], torch.float64), stack(seed + 10, 40, [4, 8], torch.float64)
    same(cka_matrix(a, b, debiased=debiased, space=space), per_pair(a, b, debiased))
    within = cka_matrix(a, debiased=debiased, space=space)
    same(within, per_pair(a, a, debiased))
    assert torch.equal(within, within.T)


@pytest.mark.parametrize("seed", SEEDS)
def test_float32_agrees_with_float64(seed: int) -> None:
    a = stack(seed, 300, [32, 32, 16], torch.float32)
    exact = cka_matrix([x.double() for x in a])
    for space in ("sample", "feature"):
        same(cka_matrix(a, space=space), exact, FLOAT32)
        same(
            cka_matrix(a, debiased=True, space=space),
            cka_matrix([x.double() for x in a], debiased=True),
            FLOAT32,
        )


def split_rows(n: int, seed: int) -> list[slice]:
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(n - 1, generator=g)[:3].add(1).tolist())
    bounds = [0, *cuts, n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streaming_equals_in_memory(seed: int, debiased: bool, dtype: torch.dtype) -> None:
    a, b = stack(seed, 70, [6, 9, 6], dtype), stack(seed + 10, 70, [4, 8], dtype)
    cross, within = StreamingCKA(debiased=debiased), StreamingCKA(debiased=debiased)
    for rows in split_rows(70, seed):
        cross.update([x[rows] for x in a], [y[rows] for y in b])
        within.update([x[rows] for x in a])
    tol = EXACT if dtype == torch.float64 else FLOAT32
    same(
        cross.compute(), cka_matrix([x.double() for x in a], [y.double() for y in b], debiased=debiased), tol
    )
    same(within.compute(), cka_matrix([x.double() for x in a], debiased=debiased), tol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_merge_equals_union(seed: int, debiased: bool) -> None:
    a, b = stack(seed, 90, [5, 7], torch.float64), stack(seed + 10, 90, [6], torch.float64)
    # shards with very different means, so the accumulators start from very different shifts
    first, second = slice(0, 30), slice(30, 90)
    shifted_a = [torch.cat([x[first] - 50.0, x[second] + 50.0]) for x in a]
    parts = []
    for rows in (first, second):
        for within in (False, True):
            acc = StreamingCKA(debiased=debiased)
            for chunk in split_rows(rows.stop - rows.start, seed):
                idx = slice(rows.start + chunk.start, rows.start + chunk.stop)
                acc.update([x[idx] for x in shifted_a], None if within else [y[idx] for y in b])
            parts.append(acc)
    cross_1, within_1, cross_2, within_2 = parts
    union_cross = StreamingCKA(debiased=debiased).update(shifted_a, b)
    union_within = StreamingCKA(debiased=debiased).update(shifted_a)
    for merged in (cross_1.merge(cross_2), cross_2.merge(cross_1)):
        assert merged.n_examples == 90
        same(merged.compute(), union_cross.compute())
    same(within_1.merge(within_2).compute(), union_within.compute())
    same(within_1.merge(StreamingCKA(debiased=debiased)).compute(), within_1.compute())
    same(StreamingCKA(debiased=debiased).merge(within_1).compute(), within_1.compute())
    # merging does not change its operands, and the merged accumulator keeps accumulating
    before = cross_1.compute()
    grown = cross_1.merge(cross_2)
    same(cross_1.compute(), before)
    grown.update([x[:10] for x in shifted_a], [y[:10] for y in b])
    assert grown.n_examples == 100


@pytest.mark.parametrize("seed", SEEDS)
def test_minibatch_merge_equals_union(seed: int) -> None:
    a = stack(seed, 64, [5, 7], torch.float64)
    halves = [MinibatchCKA().update([x[rows] for x in a]) for rows in (slice(0, 32), slice(32, 64))]
    union = MinibatchCKA().update([x[:32] for x in a]).update([x[32:] for x in a])
    same(halves[0].merge(halves[1]).compute(), union.compute())
    same(union.compute()[0, 1], minibatch_cka(a[0], a[1], batch_size=32))
    same(union.compute().diagonal(), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("seed", SEEDS)
def test_minibatch_approaches_full_debiased_cka(seed: int) -> None:
    x, y = data(seed, n=2000)
    full = float(linear_cka(x, y, debiased=True))
    assert float(minibatch_cka(x, y, batch_size=200)) == pytest.approx(full, abs=0.03)
