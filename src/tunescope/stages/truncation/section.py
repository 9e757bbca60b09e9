"""Report section of the ``truncation`` stage: the metric as top layers are dropped, no retraining."""

from __future__ import annotations

from typing import Any

from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("truncation")
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: int(r["layers_kept"]))
    kept = [int(r["layers_kept"]) for r in rows]
    values = [float(r["value"]) for r in rows]
    metric = rows[0]["metric"]
    fig = plot_layer_curves({"tuned": (kept, values)}, ylabel=metric, title=f"{metric} vs layers kept")
    fig.axes[0].set_xlabel("layers kept")
    chosen = sec.table("truncation_recommendation")
    if not chosen:
        sentence = f"The full model's {metric} is undefined, so no recommendation."
    else:
        best = chosen[0]
        k, n_layers, loss = int(best["layers_kept"]), int(best["n_layers"]), float(best["max_loss"])
        value, full = float(best["value"]), float(best["full_value"])
        if k == n_layers:
            sentence = (
                f"Every layer counts here: dropping even the top layer costs more than {loss:g} point(s) "
                f"of {metric}."
            )
        else:
            saved = 1 - int(best["params"]) / int(best["full_params"])
            sentence = (
                f"Dropping the top {n_layers - k} layer(s) costs {100 * (full - value):.1f} points of "
                f"{metric} ({value:.3f} vs {full:.3f}) and saves {100 * saved:.0f}% of the parameters, "
                "with no retraining."
            )
    return {"figures": [sec.figure("truncation", fig)], "sentence": sentence, "rows": rows}
