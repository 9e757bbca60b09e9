"""Variability ratio (Xie et al. 2022): float64 reference, streaming/merge, invariances, layer selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunescope.errors import DataError, InputError, MeasureError
from tunescope.testing.reference_probing import variability_reference
from tunescope.variability import (
    LayerSelection,
    VariabilityStats,
    layer_variability,
    select_layers,
    variability,
)


def planted(
    n: int = 90, d: int = 6, n_classes: int = 3, separation: float = 1.0, seed: int = 0, offset: float = 0.0
) -> tuple[torch.Tensor, np.ndarray]:
    """Gaussian classes around random means scaled by ``separation``; unequal class sizes."""
    g = torch.Generator().manual_seed(seed)
    labels = np.array([i % n_classes if i % 5 else 0 for i in range(n)])  # class 0 over-represented
    means = torch.randn(n_classes, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + separation * means[torch.from_numpy(labels)]
    return x + offset, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_float64_reference(seed: int) -> None:
    x, y = planted(seed=seed)
    assert variability(x, y) == pytest.approx(variability_reference(x, y), rel=1e-10)


def test_more_classes_than_dimensions_uses_pseudo_inverse() -> None:
    x, y = planted(n=120, d=3, n_classes=6, seed=3)  # Sigma_B is full rank; and with d > C - 1 below
    assert variability(x, y) == pytest.approx(variability_reference(x, y), rel=1e-10)
    x, y = planted(n=120, d=12, n_classes=3, seed=4)  # rank(Sigma_B) = 2 < d
    assert variability(x, y) == pytest.approx(variability_reference(x, y), rel=1e-10)


def test_float32_input_with_large_offset_matches_reference() -> None:
    x, y = planted(n=200, d=8, seed=5, offset=300.0)
    x32 = x.float()
    assert variability(x32, y) == pytest.approx(variability_reference(x32.double(), y), rel=1e-6)


def test_streaming_equals_in_memory_and_per_layer() -> None:
    layers = {layer: planted(n=150, separation=layer, seed=10 + layer)[0] for layer in range(3)}
    _, y = planted(n=150)
    stats = VariabilityStats()
    for rows in (slice(0, 40), slice(40, 41), slice(41, 150)):
        stats.update({k: v[rows].float() for k, v in layers.items()}, y[rows])
    streamed = stats.compute()
    whole = layer_variability({k: v.float() for k, v in layers.items()}, y)
    for layer, x in layers.items():
        expected = variability_reference(x.float().double(), y)
        assert streamed[layer] == pytest.approx(expected, rel=1e-6)
        assert whole[layer] == pytest.approx(expected, rel=1e-6)
        assert variability(x, y) == pytest.approx(variability_reference(x, y), rel=1e-10)
    assert stats.n_examples == 150


def test_merge_equals_union_with_classes_seen_by_one_shard() -> None:
    x, y = planted(n=120, n_classes=4, seed=6)
    first = np.isin(y, [0, 1])  # shard A sees classes 0, 1; shard B sees 2, 3 and some of 1
    first[::7] = False
    a = VariabilityStats().update([x[torch.from_numpy(first)] + 5.0], y[first])
    b = VariabilityStats().update([x[torch.from_numpy(~first)] + 5.0], y[~first])
    before = a.compute() if len(set(y[first].tolist())) > 1 else None
    merged = a.merge(b)
    assert merged.compute()[0] == pytest.approx(variability_reference(x, y), rel=1e-9)
    assert b.merge(a).compute()[0] == pytest.approx(merged.compute()[0], rel=1e-9)
    assert a.compute() == before  # merge changes neither input
    assert VariabilityStats().merge(a).compute() == a.compute()


def test_invariant_to_class_renaming_rotation_and_translation() -> None:
    x, y = planted(n=100, d=5, seed=7)
    value = variability(x, y)
    names = np.array(["zeta", "alpha", "mu"])[y]  # a different (and differently sorted) naming
    assert variability(x, names) == pytest.approx(value, rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    assert variability(x @ q + 7.0, y) == pytest.approx(value, rel=1e-9)


def test_class_balanced_form_ignores_duplicating_a_class() -> None:
    x, y = planted(n=90, seed=9)
    rows = torch.from_numpy(np.flatnonzero(y == 1))
    x_dup = torch.cat([x, x[rows], x[rows]])
    y_dup = np.concatenate([y, y[rows.numpy()], y[rows.numpy()]])
    assert variability(x_dup, y_dup) == pytest.approx(variability(x, y), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_falls_as_planted_classes_separate(seed: int) -> None:
    values = [variability(*planted(n=300, separation=s, seed=seed)) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_hand_worked_values() -> None:
    # Sigma_W = 1, Sigma_B = 4 in one dimension: (1 / 4) / 2 classes
    assert variability(torch.tensor([[0.0], [2.0], [4.0], [6.0]]), [0, 0, 1, 1]) == pytest.approx(0.125)
    # collapsed classes: zero within-class scatter
    assert variability(torch.tensor([[0.0, 1.0], [0.0, 1.0], [3.0, 1.0]]), ["a", "a", "b"]) == 0.0


def test_representations_labels_are_used() -> None:
    from tunescope.extract import Representations

    x, y = planted(n=60, seed=11)
    reps = Representations({0: x.float(), 1: 2 * x.float()}, "mean", labels=y)
    values = layer_variability(reps)
    assert values[0] == pytest.approx(values[1], rel=1e-6)  # scaling changes nothing


# --- bad input: one clear error each --------------------------------------------------------------


def test_single_class() -> None:
    with pytest.raises(DataError, match="two classes"):
        variability(torch.randn(5, 2), [1] * 5)
    with pytest.raises(DataError, match="two classes"):
        VariabilityStats().update([torch.randn(5, 2)], ["a"] * 5).compute()


def test_label_count_differs_from_rows() -> None:
    with pytest.raises(DataError, match="4 labels for 5 rows"):
        variability(torch.randn(5, 2), [0, 1, 0, 1])
    with pytest.raises(DataError, match="one label per row"):
        layer_variability({1: torch.randn(5, 2)}, np.zeros((5, 2)))


def test_degenerate_layer_zero_between_class_scatter() -> None:
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0], [-2.0, -1.0]])  # both class means are 0
    with pytest.raises(MeasureError, match="zero between-class scatter"):
        variability(x, [0, 0, 1, 1])
    with pytest.raises(MeasureError, match="layer 3"):
        layer_variability({2: torch.randn(4, 2), 3: torch.ones(4, 2) * 5}, [0, 0, 1, 1])


def test_other_bad_inputs() -> None:
    with pytest.raises(MeasureError, match="NaN"):
        variability(torch.tensor([[0.0], [float("nan")]]), [0, 1])
    stats = VariabilityStats().update({1: torch.randn(4, 3)}, [0, 1, 0, 1])
    with pytest.raises(MeasureError, match="widths"):
        stats.update({1: torch.randn(4, 2)}, [0, 1, 0, 1])
    with pytest.raises(MeasureError, match="layers"):
        stats.merge(VariabilityStats().update({2: torch.randn(4, 3)}, [0, 1, 0, 1]))
    with pytest.raises(DataError, match="no rows"):
        VariabilityStats().compute()


# --- layer selection ------------------------------------------------------------------------------


def test_select_layers_on_hand_made_curves() -> None:
    u_shape = {0: 8.0, 1: 6.0, 2: 4.0, 3: 2.0, 4: 1.0, 5: 1.5, 6: 3.0}
    sel = select_layers(u_shape, budget=3)
    assert sel == LayerSelection(4, (2, 3, 4), (5, 6), sel.reason)
    assert "layer 4" in sel.reason and "drop layers 5,6" in sel.reason

    falling = {layer: 10.0 - layer for layer in range(7)}  # the top layer is the most specialised
    sel = select_layers(falling, budget=2)
    assert (sel.classifier_layer, sel.adapt_layers, sel.dropped_layers) == (6, (5, 6), ())

    # the embedding output is not a candidate; a tie goes to the lower (cheaper) layer
    sel = select_layers({0: 0.1, 1: 3.0, 2: 1.0, 3: 1.0, 4: 2.0}, budget=1)
    assert (sel.classifier_layer, sel.adapt_layers) == (2, (2,))

    # a budget larger than the layers below l*: the window stops at layer 1
    sel = select_layers({0: 5.0, 1: 3.0, 2: 1.0, 3: 2.0}, budget=4)
    assert sel.adapt_layers == (1, 2) and "only 2 exist" in sel.reason


def test_select_layers_bad_input() -> None:
    with pytest.raises(InputError, match="budget"):
        select_layers({1: 1.0}, budget=0)
    with pytest.raises(InputError, match="not finite"):
        select_layers({1: 1.0, 2: float("nan")}, budget=1)
    with pytest.raises(InputError, match="at least one layer"):
        select_layers({}, budget=1)
