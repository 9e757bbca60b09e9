"""Report section of the ``variability`` stage: the variability curve per model and the layers chosen."""

from __future__ import annotations

import math
from typing import Any

from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves

#: a curve spanning more than this factor between its smallest and largest value is drawn on a log axis
LOG_RANGE = 100.0


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("variability")
    if not rows:
        return None
    curves: dict[str, tuple[list[int], list[float]]] = {}
    marks: dict[str, list[int]] = {}
    undefined: list[str] = []
    for row in sorted(rows, key=lambda r: int(r["layer"])):
        value = float(row["variability"])
        if not math.isfinite(value):
            undefined.append(f"{row['model']} layer {row['layer']}")
            continue
        layers, values = curves.setdefault(row["model"], ([], []))
        layers.append(int(row["layer"]))
        values.append(value)
        if row["selected"] in ("classifier", "adapt"):
            marks.setdefault(row["model"], []).append(int(row["layer"]))
    figures = []
    if curves:
        fig = plot_layer_curves(
            curves, ylabel="variability (lower = separated)", title="hidden-state variability", marks=marks
        )
        finite = [v for _, values in curves.values() for v in values]
        if min(finite) > 0 and max(finite) / min(finite) > LOG_RANGE:
            fig.axes[0].set_yscale("log")
        figures.append(sec.figure("variability", fig))
    chosen = sec.table("layer_selection")
    if chosen:
        row = chosen[0]
        sentence = f"With a budget of {row['budget']} layer(s): {row['reason']}."
        if row.get("n_examples"):
            sentence += (
                f" Computed on {row['n_examples']} {row['split']} examples, each text pooled by "
                f"{row['pooling']}."
            )
        if marks:
            sentence += " Circled points are the layers to tune."
    else:
        sentence = "No layer selection: no layer of the pre-trained model has a defined variability."
    if undefined:
        sentence += f" Undefined (identical class means): {', '.join(undefined)}."
    return {"figures": figures, "sentence": sentence, "rows": rows}
