"""Report section of the ``selection`` stage: variability-chosen layers vs top layers vs full fine-tuning."""

from __future__ import annotations

from typing import Any

from tunescope.locations import format_layers, parse_layers
from tunescope.report._section import Section

#: metric differences smaller than this read as "level with"
TIE = 5e-4


def _layers(text: str) -> str:
    layers = parse_layers(text, option="the selection table's trained_layers") or ()
    if not layers:
        return "no layer (the head alone)"
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {format_layers(layers)}"


def _versus(value: float, other: float, what: str) -> str:
    if abs(value - other) < TIE:
        word = "level with"
    else:
        word = "above" if value > other else "below"
    return f"{word} {what} ({other:.3f})"


def sentence(rows: dict[str, dict[str, str]]) -> str:
    """One sentence comparing the strategies; every comparison word comes from the numbers."""
    chosen, top, full = rows["variability"], rows["top"], rows["full"]
    metric = chosen["metric"]
    value = float(chosen["value"])
    n_top = len(parse_layers(top["trained_layers"]) or ())
    top_name = "the top layer" if n_top == 1 else f"the top {n_top} layers"
    text = (
        f"Tuning only {_layers(chosen['trained_layers'])} with the classifier on layer "
        f"{chosen['classifier_layer']} (chosen by variability) reaches {value:.3f} {metric}: "
        f"{_versus(value, float(top['value']), top_name)} and "
        f"{_versus(value, float(full['value']), 'full fine-tuning')}"
    )
    params = int(chosen["trainable_params"]) / max(int(full["trainable_params"]), 1)
    text += f", training {100 * params:.0f}% of the parameters"
    full_seconds = float(full["train_seconds"])
    if full_seconds > 0:
        text += f" in {100 * float(chosen['train_seconds']) / full_seconds:.0f}% of the time"
    values = {name: float(row["value"]) for name, row in rows.items()}
    best = max(values.values())
    names = {"variability": "the variability choice", "top": top_name, "full": "full fine-tuning"}
    leaders = [names.get(name, name) for name, v in values.items() if best - v < TIE]
    if len(leaders) == len(values):
        return text + f". All three strategies reach the same {metric}."
    return text + f". Best {metric}: {' and '.join(leaders)} ({best:.3f})."


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("selection")
    if not rows:
        return None
    by_strategy = {row["strategy"]: row for row in rows}
    text = (
        sentence(by_strategy)
        if {"variability", "top", "full"} <= set(by_strategy)
        else "The selection experiment is incomplete; see the table."
    )
    return {"sentence": text, "rows": rows}
