"""Report section of the ``truncation`` stage: the metric as top layers are dropped, no retraining."""

from __future__ import annotations

from typing import Any

from tunescope.report._section import Section
from tunescope.report.claims import Difference, difference, interval_text, verdict
from tunescope.report.figures import plot_layer_curves

PHANG = (
    "Phang et al. (2021) find that the top layers of a fine-tuned encoder can often be dropped without "
    "retraining"
)


def phang_verdict(rows: list[dict[str, Any]], max_loss: float) -> str | None:
    """Whether dropping the top layer stays within ``max_loss`` points, judged by its paired interval.

    Agrees when the interval's lower bound is within the tolerance, disagrees when even its upper bound
    is beyond it, cannot tell otherwise (``None`` for a one-layer model).
    """
    by_k = {int(r["layers_kept"]): r for r in rows}
    n_layers = max(by_k)
    if n_layers - 1 not in by_k:
        return None
    drop_one = difference(by_k[n_layers - 1])
    tolerance = -max_loss / 100
    agrees = None
    if drop_one.low >= tolerance:
        agrees = True
    elif drop_one.high < tolerance:
        agrees = False
    return (
        f"{PHANG}; {verdict(agrees)}: dropping the top layer {drop_one.words()} "
        f"(tolerance {max_loss:g} point(s))."
    )


def recommendation_sentence(chosen: list[dict[str, Any]], rows: list[dict[str, Any]], metric: str) -> str:
    """The recommended cut, its cost with the interval, and the parameters it saves."""
    if not chosen:
        return f"The full model's {metric} is undefined, so no recommendation."
    best = chosen[0]
    k, n_layers, loss = int(best["layers_kept"]), int(best["n_layers"]), float(best["max_loss"])
    if k == n_layers:
        by_k = {int(r["layers_kept"]): r for r in rows}
        if n_layers - 1 in by_k:
            drop = difference(by_k[n_layers - 1])
            if drop.loss:
                return (
                    f"Every layer counts here: dropping the top layer {drop.words()} of {metric}, more than "
                    f"the {loss:g} point(s) allowed."
                )
            return (
                f"No cut is recommended: dropping the top layer changes {metric} by {100 * drop.value:+.1f} "
                f"points on these examples, more than the {loss:g} point(s) allowed, but its interval "
                f"{drop.interval()} cannot tell that from no change; more analysis examples (--limit) would."
            )
        return "The model has one layer; nothing to drop."
    saved = 1 - int(best["params"]) / int(best["full_params"])
    cost = Difference(best["delta"], best["delta_ci_low"], best["delta_ci_high"]).words()
    return (
        f"Dropping the top {n_layers - k} layer(s) {cost} of {metric} ({float(best['value']):.3f} vs "
        f"{float(best['full_value']):.3f}) and saves {100 * saved:.0f}% of the parameters, with no "
        "retraining."
    )


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("truncation")
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: int(r["layers_kept"]))
    kept = [int(r["layers_kept"]) for r in rows]
    values = [float(r["value"]) for r in rows]
    metric = rows[0]["metric"]
    fig = plot_layer_curves({"tuned": (kept, values)}, ylabel=metric, title=f"{metric} vs layers kept")
    ax = fig.axes[0]
    lows = [float(r.get("ci_low", "nan") or "nan") for r in rows]
    highs = [float(r.get("ci_high", "nan") or "nan") for r in rows]
    ax.fill_between(kept, lows, highs, alpha=0.2, label="interval")
    ax.set_xlabel("layers kept")
    chosen = sec.table("truncation_recommendation")
    sentences = [recommendation_sentence(chosen, rows, metric)]
    if chosen:
        claim = phang_verdict(rows, float(chosen[0]["max_loss"]))
        if claim:
            sentences.append(claim)
    shown: list[dict[str, Any]] = [
        {
            **row,
            "interval": interval_text(row.get("ci_low"), row.get("ci_high")),
            "delta_text": Difference(row.get("delta"), row.get("delta_ci_low"), row.get("delta_ci_high")),
        }
        for row in rows
    ]
    return {
        "figures": [sec.figure("truncation", fig)],
        "sentence": " ".join(sentences),
        "rows": shown,
        "level": f"{100 * sec.confidence:g}%",
    }
