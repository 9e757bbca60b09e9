"""Report section of the ``domains`` stage: same-layer similarity per domain, in minus out of domain."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from tunescope.locations import format_layers
from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves

Curve = tuple[list[int], list[float]]
#: a layer counts as "changed more in domain" when its in-domain value is lower by more than this
MIN_GAP = 0.01


def measure_label(measure: str, short: bool = False) -> str:
    """``linear_cka`` -> ``linear CKA`` (``CKA`` when short); ``rsa_cosine_pearson`` -> ``RSA (cosine RDM,
    pearson)`` (``RSA`` when short)."""
    if measure == "linear_cka":
        return "CKA" if short else "linear CKA"
    if measure.startswith("rsa_"):
        rdm, _, compare = measure.removeprefix("rsa_").partition("_")
        return "RSA" if short else f"RSA ({rdm} RDM, {compare})"
    return measure


def _gap(inside: Curve, outside: list[Curve]) -> tuple[list[int], list[float], list[float]]:
    """Shared layers, the in-domain values and the mean out-of-domain values there."""
    layers = [x for x in inside[0] if all(x in c[0] for c in outside)]
    own = [inside[1][inside[0].index(x)] for x in layers]
    mean = [float(np.mean([c[1][c[0].index(x)] for c in outside])) for x in layers]
    return layers, own, mean


def _sentence(label: str, layers: list[int], own: list[float], mean: list[float]) -> str:
    diff = [a - b for a, b in zip(own, mean, strict=True)]
    more = [x for x, d in zip(layers, diff, strict=True) if d < -MIN_GAP]
    i = int(np.argmin(diff))
    at = f"({label} {own[i]:.2f} vs {mean[i]:.2f} at layer {layers[i]})"
    if more:
        plural = "s" if len(more) > 1 else ""
        return (
            f"Fine-tuning changed in-domain inputs more than out-of-domain ones at layer{plural} "
            f"{format_layers(more)} {at}."
        )
    return (
        f"By {label}, fine-tuning did not change in-domain inputs more than out-of-domain ones at any layer "
        f"(by more than {MIN_GAP}; closest: {label} {own[i]:.2f} in domain vs {mean[i]:.2f} out of domain at "
        f"layer {layers[i]})."
    )


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("domains")
    if not rows:
        return None
    grouped: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    inside_name = next(r["domain"] for r in rows if r["in_domain"] == "True")
    for row in rows:
        grouped[row["measure"]][row["domain"]].append(row)
    figures, sentences = [], []
    gaps: dict[str, Curve] = {}
    for measure, domains in grouped.items():
        curves: dict[str, Curve] = {}
        for domain, group in domains.items():
            group.sort(key=lambda r: int(r["layer"]))
            name = f"{domain} (in domain)" if domain == inside_name else domain
            curves[name] = ([int(r["layer"]) for r in group], [float(r["value"]) for r in group])
        label = measure_label(measure)
        n = rows[0]["n_examples"]
        fig = plot_layer_curves(
            curves, ylabel=f"{label}, tuned vs base, same layer", title=f"Change per domain ({n} inputs each)"
        )
        figures.append(sec.figure(f"domains_{measure}", fig))
        inside = curves.pop(f"{inside_name} (in domain)")
        if not curves:
            continue
        layers, own, mean = _gap(inside, list(curves.values()))
        gaps[label] = (layers, [a - b for a, b in zip(own, mean, strict=True)])
        sentences.append(_sentence(measure_label(measure, short=True), layers, own, mean))
    if gaps:
        fig = plot_layer_curves(
            gaps,
            ylabel="in domain − mean out of domain",
            title="Below 0: in-domain inputs changed more",
        )
        fig.axes[0].axhline(0.0, color="grey", linewidth=1)
        figures.append(sec.figure("domains_gap", fig))
    return {"figures": figures, "sentences": sentences, "in_domain": inside_name}
