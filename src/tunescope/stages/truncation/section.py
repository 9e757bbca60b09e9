"""Report section of the ``truncation`` stage: the metric as top layers are dropped, no retraining."""

from __future__ import annotations

from typing import Any

from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves
from tunescope.truncation import recommend


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("truncation")
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: int(r["layers_kept"]))
    kept = [int(r["layers_kept"]) for r in rows]
    values = [float(r["value"]) for r in rows]
    params = [int(r["params"]) for r in rows]
    metric = rows[0]["metric"]
    fig = plot_layer_curves({"tuned": (kept, values)}, ylabel=metric, title=f"{metric} vs layers kept")
    fig.axes[0].set_xlabel("layers kept")
    best = recommend([{"layers_kept": k, "value": v} for k, v in zip(kept, values, strict=True)])
    if best is None:
        sentence = f"The full model's {metric} is undefined, so no recommendation."
    elif best["layers_kept"] == kept[-1]:
        sentence = (
            f"Every layer counts here: dropping even the top layer costs more than 1 point of {metric}."
        )
    else:
        i = kept.index(best["layers_kept"])
        saved = 1 - params[i] / params[-1]
        sentence = (
            f"Dropping the top {kept[-1] - kept[i]} layer(s) costs {100 * (values[-1] - values[i]):.1f} "
            f"points of {metric} ({values[i]:.3f} vs {values[-1]:.3f}) and saves {100 * saved:.0f}% of the "
            "parameters, with no retraining."
        )
    return {"figures": [sec.figure("truncation", fig)], "sentence": sentence, "rows": rows}
