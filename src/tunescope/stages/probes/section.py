"""Report section of the ``probes`` stage: probe accuracy by layer, base vs tuned, with control tasks."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from tunescope.report._section import Section
from tunescope.report.claims import Difference, interval_text, verdict
from tunescope.report.figures import plot_layer_curves

#: probe task -> what it decodes, for sentences and figure titles
_WHAT: dict[str, str] = {
    "pos": "POS",
    "upos": "UPOS",
    "tag": "Penn Treebank tags",
    "xpos": "XPOS",
    "dep": "dependency labels",
    "deprel": "dependency relations",
}
#: probe task -> the information the sentence says fine-tuning kept or lost
_INFORMATION: dict[str, str] = {
    "pos": "part-of-speech",
    "upos": "part-of-speech",
    "tag": "part-of-speech",
    "xpos": "part-of-speech",
    "dep": "syntactic (dependency)",
    "deprel": "syntactic (dependency)",
}
#: a loss of at most this many points of probe accuracy counts as kept (Merchant et al.'s "does not forget")
KEPT_POINTS = 2.0
#: the probes.csv columns the section reads, per (probe task, model) and layer
_COLUMNS = (
    "accuracy",
    "ci_low",
    "ci_high",
    "control_accuracy",
    "majority_accuracy",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
)

Curve = tuple[list[int], list[float]]


def _what(task: str, silver: bool) -> str:
    name = _WHAT.get(task)
    if name is None:  # the sentence-level fallback: the task's own labels
        return f"the {task} labels (sentence level)"
    return f"{'silver' if silver else 'gold'} {name}"


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _curves(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, Curve]]]:
    """probe task -> model -> column -> (layers, values), layers ascending (NaN for an empty cell)."""
    grouped: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        grouped[(row["probe_task"], row["model"])].append(row)
    out: dict[str, dict[str, dict[str, Curve]]] = defaultdict(dict)
    for (task, model), group in grouped.items():
        group.sort(key=lambda r: int(r["layer"]))
        layers = [int(r["layer"]) for r in group]
        out[task][model] = {column: (layers, [_float(r.get(column)) for r in group]) for column in _COLUMNS}
    return out


def merchant_verdict(low: float, high: float) -> bool | None:
    """Does a per-layer change in probe accuracy (tuned - base, interval ``[low, high]``) keep the
    information, as Merchant et al. (2020) found?

    True when every change the interval allows is a loss of at most :data:`KEPT_POINTS` (or a gain),
    False when the whole interval is a larger loss, None (cannot tell) when it straddles that bound or is
    undefined.
    """
    if math.isnan(low) or math.isnan(high):
        return None
    tolerance = KEPT_POINTS / 100
    if low >= -tolerance:
        return True
    if high < -tolerance:
        return False
    return None


def _value(curve: dict[str, Curve], column: str, layer: int) -> float:
    layers, values = curve[column]
    return values[layers.index(layer)]


def _sentence(task: str, what: str, models: dict[str, dict[str, Curve]]) -> str:
    names = list(models)
    first = models[names[0]]
    layers, accuracy = first["accuracy"]
    best = layers[accuracy.index(max(accuracy))]
    bounds = interval_text(_value(first, "ci_low", best), _value(first, "ci_high", best), digits=2)
    best_text = f"{_value(first, 'accuracy', best):.2f}{' ' + bounds if bounds else ''}"
    if len(names) == 1:
        return (
            f"The {names[0]} model decodes {what} best at layer {best} ({best_text}; control task "
            f"{_value(first, 'control_accuracy', best):.2f})."
        )
    second = models[names[1]]
    information = _INFORMATION.get(task, "label")
    if best not in second["delta"][0]:
        return f"The {names[1]} model was not probed at layer {best}, where {names[0]} decodes {what} best."
    change = Difference(*(_value(second, c, best) for c in ("delta", "delta_ci_low", "delta_ci_high")))
    agrees = merchant_verdict(change.low, change.high)
    sentence = (
        f"Merchant et al. (2020) found that fine-tuning keeps {information} information; {verdict(agrees)}"
        f" (a loss of at most {KEPT_POINTS:g} points counts as kept): at layer {best}, where {names[0]} "
        f"decodes {what} best ({best_text}), the {names[1]} model's probe "
        f"{change.words(loss='loses', gain='gains')}"
    )
    if agrees is None and math.isnan(change.low):
        sentence += " (the two models were not tested on the same words)"
    drops = {
        layer: Difference(*(_value(second, c, layer) for c in ("delta", "delta_ci_low", "delta_ci_high")))
        for layer in second["delta"][0]
    }
    losses = {layer: d for layer, d in drops.items() if d.loss}
    if losses:
        worst = min(losses, key=lambda layer: losses[layer].value)
        return sentence + f"; the largest measurable drop is at layer {worst} ({losses[worst].words()})."
    if any(not math.isnan(d.low) for d in drops.values()):
        return sentence + "; no layer decodes it measurably less well than before."
    return sentence + "."


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("probes")
    if not rows:
        return None
    silver = {row["probe_task"]: row["silver"] == "True" for row in rows}
    figures, sentences = [], []
    for task, models in _curves(rows).items():
        what = _what(task, silver[task])
        fig = plot_layer_curves(
            {model: curves["accuracy"] for model, curves in models.items()},
            ylabel="probe accuracy (test)",
            title=f"{what[0].upper()}{what[1:]} (dashed: control)",
        )
        ax = fig.axes[0]
        for line, curves in zip(list(ax.get_lines()), models.values(), strict=True):
            layers, values = curves["control_accuracy"]
            ax.plot(layers, values, linestyle="--", color=line.get_color(), alpha=0.8)
            (_, low), (_, high) = curves["ci_low"], curves["ci_high"]
            ax.fill_between(layers, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        majority = next(iter(models.values()))["majority_accuracy"][1][0]
        ax.axhline(majority, color="grey", linestyle=":", linewidth=1, label="majority class")
        ax.legend(fontsize=8)
        figures.append(sec.figure(f"probes_{task}", fig))
        sentences.append(_sentence(task, what, models))
    level = sec.manifest.get("config", {}).get("confidence", 0.95)
    return {"figures": figures, "sentences": sentences, "level": f"{100 * float(level):g}%"}
