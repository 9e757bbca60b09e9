"""Figures drawn from result tables. Each function takes ``ax=None`` and returns the figure; none shows it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["plot_head_importance", "plot_layer_curves", "plot_similarity_matrix"]


def _axes(ax: Axes | None, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure()
        assert isinstance(fig, Figure)
        return fig, ax
    fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax


def plot_layer_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    ylabel: str,
    title: str = "",
    marks: Mapping[str, Sequence[int]] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One line per model of a per-layer value.

    Args:
        curves: model name -> (layers, values).
        ylabel: what the values are.
        title: axes title.
        marks: model name -> layers to highlight with a marker (e.g. selected layers).
        ax: axes to draw on (a new figure when None).
    """
    fig, ax = _axes(ax, (4.2, 3.0))
    for name, (layers, values) in curves.items():
        (line,) = ax.plot(layers, values, marker="o", markersize=3, label=name)
        for layer in (marks or {}).get(name, []):
            ax.plot(
                [layer],
                [values[list(layers).index(layer)]],
                "o",
                markersize=9,
                mfc="none",
                color=line.get_color(),
            )
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_similarity_matrix(
    matrix: np.ndarray,
    *,
    layers_a: Sequence[int],
    layers_b: Sequence[int],
    label_a: str,
    label_b: str,
    measure: str = "linear CKA",
    blocks: Sequence[tuple[int, int]] = (),
    ax: Axes | None = None,
    **imshow: Any,
) -> Figure:
    """Heatmap of a layer-by-layer similarity matrix; rows are ``label_a``'s layers, columns ``label_b``'s.

    Args:
        matrix: (len(layers_a), len(layers_b)) values; the colour scale is [0, 1] when they all lie in it,
            else their range (RSA correlations, Procrustes distances).
        layers_a, layers_b: layer indices of the rows and columns.
        label_a, label_b: which model each axis shows (written on the axes).
        measure: the measure's name, for the colour bar.
        blocks: (first, last) layer pairs of detected blocks, outlined on the diagonal.
        ax: axes to draw on (a new figure when None).
    """
    fig, ax = _axes(ax, (4.4, 3.8))
    finite = matrix[np.isfinite(matrix)]
    in_unit = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
    limits = (
        {"vmin": 0.0, "vmax": 1.0} if in_unit else {"vmin": float(finite.min()), "vmax": float(finite.max())}
    )
    image = ax.imshow(matrix, origin="lower", cmap="magma", **{**limits, **imshow})
    ax.set_xticks(range(len(layers_b)), [str(x) for x in layers_b], fontsize=7)
    ax.set_yticks(range(len(layers_a)), [str(x) for x in layers_a], fontsize=7)
    ax.set_xlabel(f"layer of {label_b}")
    ax.set_ylabel(f"layer of {label_a}")
    for first, last in blocks:
        i, j = list(layers_a).index(first), list(layers_a).index(last)
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), j - i + 1, j - i + 1, fill=False, ec="cyan", lw=1.5))
    fig.colorbar(image, ax=ax, label=measure, shrink=0.85)
    pair = label_a if label_a == label_b else f"{label_a} vs {label_b}"
    ax.set_title(f"{measure}: {pair}", fontsize=9)
    return fig


def plot_head_importance(matrix: np.ndarray, *, title: str = "", ax: Axes | None = None) -> Figure:
    """Heatmap of a head-importance map: rows are layers ``1..L`` (bottom to top), columns heads ``0..H-1``.

    Args:
        matrix: (L, H) importance, e.g. normalised per layer (then each row has unit L2 norm).
        title: what the map is (model and objective).
        ax: axes to draw on (a new figure when None).
    """
    n_layers, n_heads = matrix.shape
    fig, ax = _axes(ax, (0.28 * n_heads + 1.8, 0.3 * n_layers + 1.4))
    image = ax.imshow(matrix, origin="lower", cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=7)
    ax.set_yticks(range(n_layers), [str(layer) for layer in range(1, n_layers + 1)], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="importance", shrink=0.85)
    return fig
