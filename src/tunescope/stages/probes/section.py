"""Report section of the ``probes`` stage: probe accuracy by layer, base vs tuned, with control tasks."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tunescope.report._section import Section
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
#: a best-layer accuracy at most this far below the base model's counts as kept
KEPT_POINTS = 2.0

Curve = tuple[list[int], list[float]]


def _what(task: str, silver: bool) -> str:
    name = _WHAT.get(task)
    if name is None:  # the sentence-level fallback: the task's own labels
        return f"the {task} labels (sentence level)"
    return f"{'silver' if silver else 'gold'} {name}"


def _curves(rows: list[dict[str, str]]) -> dict[str, dict[str, dict[str, Curve]]]:
    """probe task -> model -> column -> (layers, values), layers ascending."""
    grouped: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        grouped[(row["probe_task"], row["model"])].append(row)
    out: dict[str, dict[str, dict[str, Curve]]] = defaultdict(dict)
    for (task, model), group in grouped.items():
        group.sort(key=lambda r: int(r["layer"]))
        layers = [int(r["layer"]) for r in group]
        out[task][model] = {
            column: (layers, [float(r[column]) for r in group])
            for column in ("accuracy", "control_accuracy", "majority_accuracy")
        }
    return out


def _sentence(task: str, what: str, models: dict[str, dict[str, Curve]]) -> str:
    names = list(models)
    first = models[names[0]]["accuracy"]
    best_first = max(first[1])
    if len(names) == 1:
        layer = first[0][first[1].index(best_first)]
        control = models[names[0]]["control_accuracy"][1][first[1].index(best_first)]
        return (
            f"The {names[0]} model decodes {what} best at layer {layer} ({best_first:.2f}; control task "
            f"{control:.2f})."
        )
    second = models[names[1]]["accuracy"]
    best_second = max(second[1])
    shared = [x for x in first[0] if x in second[0]]
    drops = {x: first[1][first[0].index(x)] - second[1][second[0].index(x)] for x in shared}
    worst = max(drops, key=lambda x: drops[x])
    information = _INFORMATION.get(task, "label")
    verdict = "kept" if 100 * (best_first - best_second) <= KEPT_POINTS else "lost some of the"
    sentence = (
        f"Fine-tuning {verdict} {information} information: the {names[1]} model's best layer decodes {what} "
        f"at {best_second:.2f} vs {best_first:.2f} before"
    )
    if drops[worst] > 0:
        return sentence + f"; the largest drop is at layer {worst} (−{100 * drops[worst]:.1f} points)."
    return sentence + "; no layer decodes it less well than before."


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
        majority = next(iter(models.values()))["majority_accuracy"][1][0]
        ax.axhline(majority, color="grey", linestyle=":", linewidth=1, label="majority class")
        ax.legend(fontsize=8)
        figures.append(sec.figure(f"probes_{task}", fig))
        sentences.append(_sentence(task, what, models))
    return {"figures": figures, "sentences": sentences}
