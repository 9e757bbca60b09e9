"""Block detection: exact optimum (brute force), planted blocks recovered, hand-worked case, errors."""

from __future__ import annotations

import pytest
import torch

from tunescope.errors import MeasureError
from tunescope.similarity import cka_matrix, find_blocks
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
