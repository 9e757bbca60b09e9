"""Report section of the ``layers`` stage: per-layer statistics of each model."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves

_STAT_LABELS = {
    "mean_norm": "mean vector norm",
    "norm_std": "std of vector norms",
    "mean_cosine": "mean cosine between examples",
    "top_pc_fraction": "variance on the first PC",
    "participation_ratio": "participation ratio",
}


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("layer_stats")
    if not rows:
        return None
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    for row in rows:
        layers, values = curves[row["statistic"]].setdefault(row["model"], ([], []))
        layers.append(int(row["layer"]))
        values.append(float(row["value"]))
    figures = [
        sec.figure(
            f"layers_{stat}",
            plot_layer_curves(
                per_model, ylabel=_STAT_LABELS.get(stat, stat), title=_STAT_LABELS.get(stat, stat)
            ),
        )
        for stat, per_model in curves.items()
    ]
    cos_layers, cos = curves["mean_cosine"]["base"]
    top = cos_layers[int(np.argmax(cos))]
    sentence = (
        f"In the pre-trained model, representations are most anisotropic at layer {top} "
        f"(mean cosine {max(cos):.2f} between different examples) and least at layer "
        f"{cos_layers[int(np.argmin(cos))]} ({min(cos):.2f})."
    )
    return {"figures": figures, "sentence": sentence}
