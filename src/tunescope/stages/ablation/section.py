"""Report section of the ``ablation`` stage: the metric lost when a layer's fine-tuning is undone."""

from __future__ import annotations

from typing import Any

from tunescope.locations import format_layers, parse_layers
from tunescope.report._section import Section
from tunescope.report.claims import Difference, difference, verdict
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


def _change(row: dict[str, Any]) -> Difference:
    return difference(row)


def merchant_verdict(rows: list[dict[str, Any]], n_layers: int) -> str | None:
    """Whether the single-layer restores that measurably cost something are all in the top half.

    Merchant et al. (2020) find that fine-tuning mostly changes the top layers. The run agrees when
    every measurable loss from restoring one layer is in layers ``> L/2``, disagrees when every one is
    in the lower half, and cannot tell when there is none or both halves have some.
    """
    singles = [r for r in rows if r["ablation"] == "restore" and len(_layers(r["layers"])) == 1]
    if not singles or n_layers < 2:
        return None
    losing = [_first(r["layers"]) for r in singles if _change(r).loss]
    agrees: bool | None = None
    if losing and all(layer > n_layers / 2 for layer in losing):
        agrees = True
    elif losing and all(layer <= n_layers / 2 for layer in losing):
        agrees = False
    where = (
        f"restoring layer(s) {', '.join(map(str, sorted(losing)))} alone costs measurably"
        if losing
        else "restoring any single layer alone makes no measurable difference"
    )
    return (
        "Merchant et al. (2020) find that fine-tuning mostly changes the top layers; "
        f"{verdict(agrees)}: {where}."
    )


def _sentence(rows: list[dict[str, Any]], metric: str) -> str:
    def single(kind: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["ablation"] == kind and len(_layers(r["layers"])) == 1]

    def cost(row: dict[str, Any]) -> float:
        return -float(row["delta"])

    top = [r for r in rows if r["ablation"] == "restore_top"]
    parts = []
    if top:
        # the most layers, from the top, that go back to pre-trained weights at no measurable loss
        cheap = [r for r in top if not _change(r).loss]
        shallowest = min(top, key=lambda r: -_first(r["layers"]))  # layer L alone
        chosen = min(cheap, key=lambda r: _first(r["layers"])) if cheap else shallowest
        lead = "Resetting" if cheap else "Even resetting"
        what = _layers_text(_layers(chosen["layers"]))
        parts.append(f"{lead} {what} to pre-trained weights {_change(chosen).words()} of {metric}")
    restores, reinits = single("restore"), single("reinit")
    if restores:
        worst = max(restores, key=cost)
        if not _change(worst).loss:
            parts.append("restoring any single layer alone makes no measurable difference")
        else:
            parts.append(
                f"the fine-tuning that matters most is layer {worst['layers']}'s (restoring it alone "
                f"{_change(worst).words()})"
            )
    if reinits:
        worst = max(reinits, key=cost)
        if not _change(worst).loss:
            parts.append("re-initialising any single layer makes no measurable difference")
        else:
            parts.append(f"re-initialising layer {worst['layers']} {_change(worst).words()}")
    if not parts:  # ALBERT: only all layers at once
        verbs = {"restore": "restoring", "reinit": "re-initialising", "restore_top": "restoring"}
        parts = [
            f"{verbs.get(r['ablation'], r['ablation'])} {_layers_text(_layers(r['layers']))} "
            f"{_change(r).words()} of {metric}"
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
    bands: dict[str, tuple[list[float], list[float]]] = {}
    for kind, label in _LABELS.items():
        points = sorted(
            (_first(r["layers"]), 100 * _change(r).value, 100 * _change(r).low, 100 * _change(r).high)
            for r in rows
            if r["ablation"] == kind and (kind == "restore_top" or len(_layers(r["layers"])) == 1)
        )
        if points:
            curves[label] = ([p[0] for p in points], [p[1] for p in points])
            bands[label] = ([p[2] for p in points], [p[3] for p in points])
    figures = []
    if curves:
        fig = plot_layer_curves(curves, ylabel=f"change in {metric} (points)", title="Undoing fine-tuning")
        ax = fig.axes[0]
        for (label, (xs, _)), line in zip(curves.items(), ax.get_lines(), strict=False):
            ax.fill_between(xs, *bands[label], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xlabel("layer l")
        figures.append(sec.figure("ablation", fig))
    n_layers = max((max(_layers(r["layers"]), default=0) for r in rows), default=0)
    sentences = [_sentence(rows, metric)]
    claim = merchant_verdict(rows, n_layers)
    if claim:
        sentences.append(claim)
    shown = [{**r, "change": _change(r)} for r in rows]
    return {
        "figures": figures,
        "sentence": " ".join(sentences),
        "rows": shown,
        "metric": metric,
        "level": f"{100 * sec.confidence:g}%",
    }
