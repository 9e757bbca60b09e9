"""Report section of the ``ffn`` stage: per-layer FFN CKA, and fine-tuning with some FFNs removed."""

from __future__ import annotations

from typing import Any

from tunescope.locations import parse_layers
from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves


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
    points = 100 * (float(full["value"]) - float(removed["value"]))
    metric = full["metric"]
    if abs(points) < 0.05:
        cost = f"leaves {metric} unchanged"
    else:
        cost = (
            f"costs {points:.1f} points of {metric}"
            if points > 0
            else f"gains {-points:.1f} points of {metric}"
        )
    params = 1 - int(removed["params"]) / int(full["params"])
    full_seconds = float(full["train_seconds"])
    seconds = 1 - float(removed["train_seconds"]) / full_seconds if full_seconds > 0 else 0.0
    return (
        f"Removing the FFN of layer{'s' if len(layers) > 1 else ''} {_and([str(x) for x in layers])} "
        f"({why}, CKA {ckas}) {cost}, "
        f"{_change(params, 'saves', 'adds')} of the parameters and "
        f"{_change(seconds, 'saves', 'adds')} of the training time."
    )


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
    asked = sec.manifest.get("config", {}).get("ffn.layers") is not None
    return {
        "figures": [sec.figure("ffn_cka", fig)],
        "sentence": _sentence(cka, rows, asked),
        "rows": rows,
        "cka_rows": cka_rows,
    }
