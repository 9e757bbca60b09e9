"""Report section of the ``ablation`` stage: the metric lost when a layer's fine-tuning is undone."""

from __future__ import annotations

from typing import Any

from tunescope.locations import format_layers, parse_layers
from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves

_ORDER = {"none": 0, "restore": 1, "reinit": 2, "restore_top": 3}
_LABELS = {
    "restore": "layer l restored",
    "reinit": "layer l re-initialised",
    "restore_top": "layers l..L restored",
}


def _layers(text: str) -> tuple[int, ...]:
    """The ``layers`` cell of a row: ``"3"`` -> (3,), ``"4-6"`` -> (4, 5, 6), ``""`` -> ()."""
    return parse_layers(text, option="the ablation table's layers") or ()


def _first(text: str) -> int:
    return min(_layers(text), default=0)


def _layers_text(layers: tuple[int, ...]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {format_layers(layers)}"


def _cost(points: float, metric: str = "") -> str:
    """``1.23`` -> "costs 1.2 points", ``-0.4`` -> "gains 0.4 points", ``0`` -> "changes nothing"."""
    of = f" of {metric}" if metric else ""
    if abs(points) < 0.05:
        return f"leaves {metric} unchanged" if metric else "changes nothing"
    return f"costs {points:.1f} points{of}" if points > 0 else f"gains {-points:.1f} points{of}"


def _sentence(rows: list[dict[str, Any]], metric: str) -> str:
    def cost(row: dict[str, Any]) -> float:
        return -100 * float(row["delta"])

    def single(kind: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["ablation"] == kind and len(_layers(r["layers"])) == 1]

    top = [r for r in rows if r["ablation"] == "restore_top"]
    parts = []
    if top:
        # the most layers, from the top, that go back to pre-trained weights for at most 1 point
        cheap = [r for r in top if cost(r) <= 1.0]
        shallowest = min(top, key=lambda r: -_first(r["layers"]))  # layer L alone
        chosen = min(cheap, key=lambda r: _first(r["layers"])) if cheap else shallowest
        lead = "Resetting" if cheap else "Even resetting"
        what = _layers_text(_layers(chosen["layers"]))
        parts.append(f"{lead} {what} to pre-trained weights {_cost(cost(chosen), metric)}")
    restores, reinits = single("restore"), single("reinit")
    if restores:
        worst = max(restores, key=cost)
        if cost(worst) < 0.05:
            parts.append("restoring any single layer alone changes nothing")
        else:
            parts.append(
                f"the fine-tuning that matters most is layer {worst['layers']}'s (restoring it alone "
                f"{_cost(cost(worst))})"
            )
    if reinits:
        worst = max(reinits, key=cost)
        if cost(worst) < 0.05:
            parts.append("re-initialising any single layer changes nothing")
        else:
            parts.append(f"re-initialising layer {worst['layers']} {_cost(cost(worst))}")
    if not parts:  # ALBERT: only all layers at once
        verbs = {"restore": "restoring", "reinit": "re-initialising", "restore_top": "restoring"}
        parts = [
            f"{verbs.get(r['ablation'], r['ablation'])} {_layers_text(_layers(r['layers']))} "
            f"{_cost(cost(r), metric)}"
            for r in rows
            if r["ablation"] != "none"
        ]
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def build(sec: Section) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = list(sec.table("ablation"))
    if not rows:
        return None
    rows.sort(key=lambda r: (_ORDER.get(r["ablation"], 9), _first(r["layers"])))
    metric = rows[0]["metric"]
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for kind, label in _LABELS.items():
        points = [
            (_first(r["layers"]), 100 * float(r["delta"]))
            for r in rows
            if r["ablation"] == kind and (kind == "restore_top" or len(_layers(r["layers"])) == 1)
        ]
        if points:
            points.sort()
            curves[label] = ([p[0] for p in points], [p[1] for p in points])
    figures = []
    if curves:
        fig = plot_layer_curves(curves, ylabel=f"change in {metric} (points)", title="Undoing fine-tuning")
        ax = fig.axes[0]
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xlabel("layer l")
        figures.append(sec.figure("ablation", fig))
    return {"figures": figures, "sentence": _sentence(rows, metric), "rows": rows, "metric": metric}
