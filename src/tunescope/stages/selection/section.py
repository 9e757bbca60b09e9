"""Report section of the ``selection`` stage: variability-chosen layers vs top layers vs full fine-tuning.

Every comparison word comes from the table's paired differences and their intervals
(:mod:`tunescope.report.claims`): an interval containing 0 reads "no measurable difference".
"""

from __future__ import annotations

from typing import Any

from tunescope.locations import format_layers, parse_layers
from tunescope.report._section import Section
from tunescope.report.claims import Difference, interval_text, verdict

#: "match" in Xie et al.'s finding: the variability arm is at most this much worse than top-m (the whole
#: interval of its difference lies above ``-MATCH_MARGIN``), in metric units (0.01 = 1 point)
MATCH_MARGIN = 0.01


def _layers(text: str) -> str:
    layers = parse_layers(text, option="the selection table's trained_layers") or ()
    if not layers:
        return "no layer (the head alone)"
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {format_layers(layers)}"


def _recipe(row: dict[str, str]) -> str:
    epochs = int(float(row["epochs"]))
    return f"lr {float(row['learning_rate']):g}, {epochs} epoch{'s' if epochs != 1 else ''}"


def _score(row: dict[str, str]) -> str:
    bounds = interval_text(row.get("ci_low"), row.get("ci_high"))
    return f"{float(row['value']):.3f} {row['metric']}" + (f" {bounds}" if bounds else "")


def _versus_top(row: dict[str, str]) -> Difference:
    return Difference(row.get("delta_top"), row.get("delta_top_ci_low"), row.get("delta_top_ci_high"))


def agrees_with_xie(row: dict[str, str]) -> bool | None:
    """Whether the variability arm matches or beats top-m: True, False (measurably worse), None (can't tell).

    "Matches" needs the whole interval of (variability - top) above ``-MATCH_MARGIN``; a measurable loss
    disagrees; a wide interval that reaches further down cannot tell.
    """
    d = _versus_top(row)
    if d.loss:
        return False
    if d.gain or (d.low == d.low and d.low >= -MATCH_MARGIN):  # d.low == d.low: not NaN
        return True
    return None


def sentence(rows: dict[str, dict[str, str]]) -> str:
    """The report's sentences, from the numbers and their intervals only."""
    chosen, top, full = rows["variability"], rows["top"], rows["full"]
    n_top = len(parse_layers(top["trained_layers"]) or ())
    top_name = "the top layer" if n_top == 1 else f"the top {n_top} layers"
    same = (
        chosen["classifier_layer"] == top["classifier_layer"]
        and chosen["trained_layers"] == top["trained_layers"]
    )
    full_words = Difference(
        chosen.get("delta"), chosen.get("delta_ci_low"), chosen.get("delta_ci_high")
    ).words()
    text = (
        f"Tuning only {_layers(chosen['trained_layers'])} with the classifier on layer "
        f"{chosen['classifier_layer']} (chosen by variability; {_recipe(chosen)}) reaches {_score(chosen)}; "
        f"against full fine-tuning ({_recipe(full)}, {_score(full)}) it {full_words}"
    )
    params = int(chosen["trainable_params"]) / max(int(full["trainable_params"]), 1)
    text += f", training {100 * params:.0f}% of the parameters"
    full_seconds = float(full["train_seconds"])
    if full_seconds > 0:
        text += f" in {100 * float(chosen['train_seconds']) / full_seconds:.0f}% of the time"
    text += "."
    finding = (
        f"Xie et al. (2022) found that the layers variability selects match or beat {top_name} with the "
        "same budget"
    )
    if same:
        text += (
            f" The lowest-variability layer is the top layer, so the variability choice is {top_name} "
            f"itself (one model); {finding}: {verdict(None)} from this choice."
        )
        runner = rows.get("next_best")
        if runner is not None:
            text += (
                " Placing the budget at the next-lowest-variability layer instead "
                f"({_layers(runner['trained_layers'])}, classifier on layer {runner['classifier_layer']}; "
                f"{_score(runner)}) "
                f"{_versus_top(runner).words()} against {top_name}."
            )
        return text
    text += (
        f" Against {top_name} ({_recipe(top)}, {_score(top)}) it {_versus_top(chosen).words()}. "
        f"{finding}: {verdict(agrees_with_xie(chosen))}."
    )
    return text


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
    return {"sentence": text, "rows": rows, "grid": sec.table("selection_grid")}
