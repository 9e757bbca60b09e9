"""Per-layer statistics against a float64 loop reference, plus properties and hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from tunescope.errors import MeasureError
from tunescope.layerstats import STATISTICS, all_layer_statistics, layer_statistics
from tunescope.testing.reference_stats import reference_layer_statistics


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(12, 5), (6, 9)])
def test_matches_reference(seed, shape):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64) + 0.5
    ours, ref = layer_statistics(x), reference_layer_statistics(x.numpy())
    for name in STATISTICS:
        assert math.isclose(ours[name], ref[name], rel_tol=1e-10, abs_tol=1e-12), name


def test_float32_input_close_to_float64_reference():
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(3))
    ours, ref = layer_statistics(x), reference_layer_statistics(x.double().numpy())
    for name in STATISTICS:
        assert math.isclose(ours[name], ref[name], rel_tol=1e-6, abs_tol=1e-9), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_properties(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 6, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    base, rotated, scaled = layer_statistics(x), layer_statistics(x @ q), layer_statistics(3.0 * x)
    for name in STATISTICS:  # a rotation changes nothing
        assert math.isclose(base[name], rotated[name], rel_tol=1e-9, abs_tol=1e-12), name
    assert math.isclose(scaled["mean_norm"], 3 * base["mean_norm"], rel_tol=1e-12)
    for name in ("mean_cosine", "top_pc_fraction", "participation_ratio"):  # scale-free
        assert math.isclose(scaled[name], base[name], rel_tol=1e-9), name
    assert -1.0 <= base["mean_cosine"] <= 1.0
    assert 1.0 <= base["participation_ratio"] <= 6.0 + 1e-9
    # shifting every vector the same way makes them point alike
    assert layer_statistics(x + 10.0)["mean_cosine"] > 0.9


def test_hand_worked():
    stats = layer_statistics(torch.tensor([[3.0, 0.0], [0.0, 4.0], [-3.0, 0.0], [0.0, -4.0]]))
    assert stats["mean_norm"] == pytest.approx(3.5)
    assert stats["norm_std"] == pytest.approx(0.5)
    # pairs: (1,3) and (2,4) have cosine -1, the other four pairs 0 -> 2 * (-2) / 12
    assert stats["mean_cosine"] == pytest.approx(-1 / 3)
    # variances 4.5 and 8 along the axes
    assert stats["top_pc_fraction"] == pytest.approx(8 / 12.5)
    assert stats["participation_ratio"] == pytest.approx(12.5**2 / (4.5**2 + 8**2))


def test_all_layers():
    reps = {0: torch.randn(5, 3), 1: torch.randn(5, 3)}
    assert set(all_layer_statistics(reps)) == {0, 1}


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (torch.zeros(3), "2-D"),
        (torch.ones(1, 3), "at least 2"),
        (torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), "NaN"),
        (torch.tensor([[0.0, 0.0], [1.0, 2.0]]), "zero vector"),
        (torch.ones(3, 2), "zero variance"),
    ],
)
def test_errors(x, words):
    with pytest.raises(MeasureError, match=words):
        layer_statistics(x)
