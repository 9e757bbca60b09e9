"""Report section of the ``truncation`` stage: the metric as top layers are dropped, no retraining."""

from __future__ import annotations

from typing import Any

from tunescope.report._section import Section, section
from tunescope.report.figures import plot_layer_curves


@section("truncation")
def _truncation(sec: Section) -> dict[str, Any] | None:
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
    full_value, full_params = values[-1], params[-1]
    # the fewest layers whose metric is within 1 point of the full model's
    k = next(k for k, v in zip(kept, values, strict=True) if v >= full_value - 0.01)
    i = kept.index(k)
    saved = 1 - params[i] / full_params
    cost = 100 * (full_value - values[i])
    if k == kept[-1]:
        sentence = (
            f"Every layer counts here: dropping even the top layer costs more than 1 point of {metric}."
        )
    else:
        sentence = (
            f"Dropping the top {kept[-1] - k} layer(s) costs {cost:.1f} points of {metric} "
            f"({values[i]:.3f} vs {full_value:.3f}) and saves {100 * saved:.0f}% of the parameters, "
            "with no retraining."
        )
    return {"figures": [sec.figure("truncation", fig)], "sentence": sentence, "rows": rows}
