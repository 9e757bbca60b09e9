"""Block detection: exact optimum (brute force), planted blocks recovered, hand-worked case, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunescope.errors import MeasureError
from tunescope.similarity import block_margin, block_test, cka_matrix, find_blocks
from tunescope.testing import reference as ref

pytestmark = pytest.mark.usefixtures("one_thread")


def planted_matrix(
    sizes: list[int], seed: int, within: float = 0.85, between: float = 0.35, noise: float = 0.05
):
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    m = torch.where(labels[:, None] == labels[None, :], within, between).double()
    e = noise * torch.randn(m.shape, generator=g, dtype=torch.float64)
    m = (m + (e + e.T) / 2).clamp(0, 1)
    return m.fill_diagonal_(1.0)


def expected_blocks(sizes: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s - 1))
        start += s
    return out


def test_hand_worked() -> None:
    m = torch.tensor(
        [[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.2], [0.2, 0.3, 1.0, 0.8], [0.1, 0.2, 0.8, 1.0]],
        dtype=torch.float64,
    )
    result = find_blocks(m)
    assert result.blocks == [(0, 1), (2, 3)]
    # within pairs 0.9, 0.8; between 0.2, 0.1, 0.3, 0.2: 0.85 - 0.2
    assert result.score == pytest.approx(0.65, abs=1e-12)
    # mean off-diagonal 2.5 / 6; objective (0.9 - 2.5/6) + (0.8 - 2.5/6)
    assert result.objective == pytest.approx(1.7 - 5 / 6, abs=1e-12)
    assert result.labels() == [0, 0, 1, 1] and result.n_blocks == 2
    assert find_blocks(m, n_blocks=1).blocks == [(0, 3)] and find_blocks(m, n_blocks=1).score == 0.0
    assert find_blocks(m, n_blocks=4).blocks == [(0, 0), (1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_blocks", [None, 2, 3, 5])
def test_dynamic_programme_is_exact(seed: int, n_blocks: int | None) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(9, 9, generator=g, dtype=torch.float64)
    m = ((a + a.T) / 2).fill_diagonal_(1.0)
    result = find_blocks(m, n_blocks=n_blocks)
    _, best = ref.brute_force_blocks(m, n_blocks)
    assert result.objective == pytest.approx(best, abs=1e-10)
    assert result.objective == pytest.approx(ref.block_objective(m, result.blocks), abs=1e-10)
    covered = [i for start, stop in result.blocks for i in range(start, stop + 1)]
    assert covered == list(range(9))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sizes", [[3, 4, 3], [2, 6, 2, 3], [7, 6]])
def test_recovers_planted_blocks_in_a_matrix(seed: int, sizes: list[int]) -> None:
    m = planted_matrix(sizes, seed)
    assert find_blocks(m).blocks == expected_blocks(sizes)
    assert find_blocks(m, n_blocks=len(sizes)).blocks == expected_blocks(sizes)
    assert find_blocks(m).score == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_blocks_in_representations(seed: int) -> None:
    # 3 groups of layers; layers in a group share a latent code, groups share little
    g = torch.Generator().manual_seed(seed)
    n, sizes = 200, [4, 3, 5]
    codes = [torch.randn(n, 8, generator=g, dtype=torch.float64) for _ in sizes]
    common = torch.randn(n, 8, generator=g, dtype=torch.float64)
    reps = []
    for code, size in zip(codes, sizes, strict=True):
        for _ in range(size):
            mix = torch.randn(8, 16, generator=g, dtype=torch.float64)
            reps.append(
                (code + 0.4 * common) @ mix + 0.3 * torch.randn(n, 16, generator=g, dtype=torch.float64)
            )
    m = cka_matrix(reps)
    assert find_blocks(m).blocks == expected_blocks(sizes)


def test_errors() -> None:
    with pytest.raises(MeasureError, match="square"):
        find_blocks(torch.ones(3, 4))
    with pytest.raises(MeasureError, match="symmetric"):
        find_blocks(torch.tensor([[1.0, 0.2], [0.7, 1.0]]))
    with pytest.raises(MeasureError, match="NaN"):
        find_blocks(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(MeasureError, match="between 1 and 2"):
        find_blocks(torch.eye(2), n_blocks=3)
    assert find_blocks(torch.ones(1, 1)).blocks == [(0, 0)]


def banded(n_layers: int, width: float) -> torch.Tensor:
    i = torch.arange(n_layers, dtype=torch.float64)
    return torch.exp(-(i[:, None] - i[None, :]).abs() / width)


@pytest.mark.parametrize("n_layers", [7, 13, 25])
@pytest.mark.parametrize("fraction", [None, 1 / 6, 1 / 3, 1.0])
def test_a_smooth_decay_is_not_block_structure(n_layers: int, fraction: float | None) -> None:
    width = 2.0 if fraction is None else n_layers * fraction
    result = find_blocks(banded(n_layers, width))
    assert result.n_blocks > 1  # the segmentation alone finds blocks in it...
    assert result.margin < -0.3 and not result.significant  # ...which a smooth decay explains better
    g = torch.Generator().manual_seed(n_layers)
    e = 0.03 * torch.randn(n_layers, n_layers, generator=g, dtype=torch.float64)
    noisy = (banded(n_layers, width) + (e + e.T) / 2).fill_diagonal_(1.0)
    assert not find_blocks(noisy).significant


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sizes", [[3, 4], [5, 2], [2, 3, 2], [6, 7], [8, 8, 9]])
def test_planted_blocks_are_significant(seed: int, sizes: list[int]) -> None:
    result = find_blocks(planted_matrix(sizes, seed))
    assert result.blocks == expected_blocks(sizes)
    assert result.significant and result.margin > 0.3


def test_margin_hand_worked() -> None:
    # two blocks, within 0.9 and between 0.2 exactly: the block model is exact (RSS 0)
    m = planted_matrix([2, 2], 0, within=0.9, between=0.2, noise=0.0)
    # entries (distance): 0.9 (1), 0.2 (2), 0.2 (3), 0.2 (1), 0.2 (2), 0.9 (1); mean 13/30
    # decay fit: distance 1 -> 2/3 (0.9, 0.2, 0.9), 2 and 3 -> 0.2; RSS_decay = 2 (0.7/3)^2 + (1.4/3)^2
    tss = sum((v - 1.3 / 3) ** 2 for v in [0.9, 0.2, 0.2, 0.2, 0.2, 0.9])
    expected = (2 * (0.7 / 3) ** 2 + (1.4 / 3) ** 2) / tss
    assert find_blocks(m).margin == pytest.approx(expected, abs=1e-12)
    assert block_margin(m, [(0, 3)]) < 0  # one block is a constant: never better than the decay
    assert find_blocks(torch.ones(2, 2)).margin == 0.0 and not find_blocks(torch.ones(3, 3)).significant
    with pytest.raises(MeasureError, match="cover"):
        block_margin(m, [(0, 1), (3, 3)])


def block_layers(seed: int, sizes: list[int], n: int = 300) -> list[torch.Tensor]:
    """Layers built from distinct random bases, one per block (plus a little shared signal)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 8, generator=g, dtype=torch.float64)
    layers = []
    for size in sizes:
        code = torch.randn(n, 8, generator=g, dtype=torch.float64)
        for _ in range(size):
            mix = torch.randn(8, 16, generator=g, dtype=torch.float64)
            layers.append(
                (code + 0.4 * common) @ mix + 0.3 * torch.randn(n, 16, generator=g, dtype=torch.float64)
            )
    return layers


def drifting_layers(seed: int, n_layers: int = 7, n: int = 300, step: float = 0.6) -> list[torch.Tensor]:
    """Each layer is the previous one plus a little noise: similarity decays smoothly, no blocks."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(n, 16, generator=g, dtype=torch.float64)]
    for _ in range(n_layers - 1):
        layers.append(layers[-1] + step * torch.randn(n, 16, generator=g, dtype=torch.float64))
    return layers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_test_on_representations(seed: int) -> None:
    planted = block_test(block_layers(seed, [3, 4]), n_boot=200, seed=seed)
    assert planted.blocks.blocks == [(0, 2), (3, 6)]
    assert planted.p_value < 0.01 and planted.significant and planted.n_boot == 200
    drift = block_test(drifting_layers(seed), n_boot=200, seed=seed)
    assert not drift.significant and drift.p_value > 0.5
    again = block_test(drifting_layers(seed), n_boot=200, seed=seed)
    assert again.p_value == drift.p_value and torch.equal(again.margins, drift.margins)


def test_block_test_exact_and_linear_bootstrap_agree() -> None:
    layers = block_layers(0, [2, 3], n=120)
    exact = block_test(layers, n_boot=50, exact=True)
    linear = block_test(layers, n_boot=50)
    assert exact.blocks == linear.blocks
    assert exact.p_value == linear.p_value == 0.0
    torch.testing.assert_close(exact.margins, linear.margins, atol=0.05, rtol=0.0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 25])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resample_margins_at_once_equal_one_by_one(n, seed):
    from tunescope.similarity.blocks import _decreasing_fit, _labels, _margin, _margins_of_resamples, _segment

    rng = np.random.default_rng(seed)
    samples = []
    for kind in range(12):  # random, banded, planted blocks, constant, and near-ties
        if kind % 4 == 0:
            m = rng.uniform(0, 1, (n, n))
        elif kind % 4 == 1:
            i = np.arange(n)
            m = np.exp(-np.abs(i[:, None] - i[None, :]) / rng.uniform(1, n + 1)) + rng.normal(0, 0.03, (n, n))
        elif kind % 4 == 2:
            cut = np.sort(rng.choice(np.arange(1, max(n, 2)), size=min(2, max(n - 1, 0)), replace=False))
            labels = np.searchsorted(cut, np.arange(n), side="right")
            m = np.where(labels[:, None] == labels[None, :], 0.85, 0.35) + rng.normal(0, 0.05, (n, n))
        else:
            m = np.full((n, n), 0.5) if kind == 3 else np.round(rng.uniform(0, 1, (n, n)), 1)
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        samples.append(m)
    ms = np.stack(samples)
    expected = [_margin(m, np.asarray(_labels(_segment(m, None, 1.0)[0]))) for m in ms]
    np.testing.assert_allclose(_margins_of_resamples(ms), expected, rtol=1e-9, atol=1e-12)
    if n > 1:
        means, weights = rng.uniform(0, 1, (5, n - 1)), rng.integers(1, 9, n - 1).astype(float)
        fits = [_decreasing_fit(row.tolist(), weights.tolist()) for row in means]
        from tunescope.similarity.blocks import _decreasing_fit_many

        np.testing.assert_allclose(_decreasing_fit_many(means, weights), fits, rtol=1e-12)
