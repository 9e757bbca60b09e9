"""Report section of the ``ffn`` stage: per-layer FFN CKA, and fine-tuning with some FFNs removed."""

from __future__ import annotations

import math
from typing import Any

from tunescope.locations import parse_layers
from tunescope.report._section import Section
from tunescope.report.claims import Difference, interval_text, verdict
from tunescope.report.figures import plot_layer_curves

#: a loss of at most this many points counts as the "little" accuracy Sridhar & Sarah (2020) found it costs
LITTLE_POINTS = 2.0


def sridhar_verdict(change: Difference) -> bool | None:
    """Does removing the FFNs cost little, as Sridhar & Sarah (2020) found?

    True when every change the interval allows is a loss of at most :data:`LITTLE_POINTS` (a loss that is
    not measurable and small, or a gain), False when the whole interval is a larger loss, None (cannot
    tell) when the interval straddles that bound or is undefined.
    """
    if math.isnan(change.low) or math.isnan(change.high):
        return None
    tolerance = LITTLE_POINTS / 100
    if change.low >= -tolerance:
        return True
    if change.high < -tolerance:
        return False
    return None


def _and(items: list[str]) -> str:
    """``["2"]`` -> "2", ``["2", "5"]`` -> "2 and 5", ``["1", "2", "5"]`` -> "1, 2 and 5"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _change(fraction: float, less: str, more: str) -> str:
    """``0.19`` -> "<less> 19%", ``-0.05`` -> "<more> 5%"."""
    return f"{less} {100 * fraction:.0f}%" if fraction >= 0 else f"{more} {-100 * fraction:.0f}%"


def _sentence(cka: dict[int, float], rows: list[dict[str, str]], asked: bool) -> str:
    if not rows:
        low, high = max(cka, key=cka.__getitem__), min(cka, key=cka.__getitem__)
        return (
            f"In the pre-trained model the FFN changes the token representations least in layer {low} "
            f"(CKA {cka[low]:.2f} between its input and the layer's output) and most in layer {high} "
            f"({cka[high]:.2f})."
        )
    full = next(r for r in rows if r["model"] == "full")
    removed = next(r for r in rows if r["model"] == "ffn_removed")
    layers = list(parse_layers(removed["ffn_removed_layers"], option="ffn.csv") or ())
    why = "as asked with --ffn.layers" if asked else "chosen where it changes the representation least"
    ckas = "/".join(f"{cka[layer]:.2f}" for layer in layers if layer in cka)
    metric = full["metric"]
    change = Difference(removed.get("delta"), removed.get("delta_ci_low"), removed.get("delta_ci_high"))
    cost = (
        f"changes {metric} from {float(full['value']):.3f} to {float(removed['value']):.3f}: it "
        f"{change.words()}"
    )
    params = 1 - int(removed["params"]) / int(full["params"])
    full_seconds = float(full["train_seconds"])
    seconds = 1 - float(removed["train_seconds"]) / full_seconds if full_seconds > 0 else 0.0
    agrees = sridhar_verdict(change)
    return (
        f"Removing the FFN of layer{'s' if len(layers) > 1 else ''} {_and([str(x) for x in layers])} "
        f"({why}, CKA {ckas}) {cost}; it "
        f"{_change(params, 'saves', 'adds')} of the parameters and "
        f"{_change(seconds, 'saves', 'adds')} of the training time. Sridhar & Sarah (2020) found that "
        f"removing FFN sublayers from chosen layers costs little accuracy; {verdict(agrees)} (a loss of at "
        f"most {LITTLE_POINTS:g} points counts as little{_why_not(agrees, change)})."
    )


def _why_not(agrees: bool | None, change: Difference) -> str:
    """Why the verdict is what it is, when that is not plain from the difference."""
    if agrees is not None:
        return ""
    if math.isnan(change.low) or math.isnan(change.high):
        return "; this run has no interval for the change"
    return f", and the interval {change.interval()} allows both a smaller and a larger loss"


def build(sec: Section) -> dict[str, Any] | None:
    cka_rows = sec.table("ffn_cka")
    if not cka_rows:
        return None
    cka = {int(r["layer"]): float(r["cka"]) for r in cka_rows}
    chosen = [int(r["layer"]) for r in cka_rows if r["chosen"] == "True"]
    layers = sorted(cka)
    fig = plot_layer_curves(
        {"pre-trained": (layers, [cka[layer] for layer in layers])},
        ylabel="linear CKA, FFN input vs layer output",
        title="How much each FFN changes the tokens (circled: removed)",
        marks={"pre-trained": chosen},
    )
    fig.axes[0].set_xlabel("layer")
    rows = sec.table("ffn")
    config = sec.manifest.get("config", {})
    asked = config.get("ffn.layers") is not None
    shown = [
        {
            **row,
            "interval": interval_text(row.get("ci_low"), row.get("ci_high")),
            "change": "" if row["model"] == "full" else _signed(row),
        }
        for row in rows
    ]
    return {
        "figures": [sec.figure("ffn_cka", fig)],
        "sentence": _sentence(cka, rows, asked),
        "rows": shown,
        "cka_rows": cka_rows,
        "level": f"{100 * float(config.get('confidence', 0.95)):g}%",
    }


def _signed(row: dict[str, str]) -> str:
    """``"-1.9 [-3.1, -0.8]"``: the row's change from the full model in points, with its interval."""
    change = Difference(row.get("delta"), row.get("delta_ci_low"), row.get("delta_ci_high"))
    bounds = interval_text(change.low, change.high, scale=100, digits=1)
    return f"{100 * change.value:+.1f} {bounds}".strip()
