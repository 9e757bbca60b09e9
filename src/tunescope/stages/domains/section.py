"""Report section of the ``domains`` stage: same-layer similarity per domain, in minus out of domain.

The sentences come from ``domain_change.csv`` only: a difference is stated with its interval, and one
whose interval contains 0 as "no measurable difference" (`tunescope.report.claims`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tunescope.locations import format_layers
from tunescope.report._section import Section
from tunescope.report.claims import Difference, verdict
from tunescope.report.figures import plot_layer_curves

Curve = tuple[list[int], list[float]]
MERCHANT = (
    "Merchant et al. (2020) find that fine-tuning changes in-domain inputs more than out-of-domain ones, "
    "most of all in the top layers"
)


def measure_label(measure: str, short: bool = False) -> str:
    """``linear_cka`` -> ``linear CKA`` (``CKA`` when short); ``rsa_cosine_pearson`` -> ``RSA (cosine RDM,
    pearson)`` (``RSA`` when short)."""
    if measure == "linear_cka":
        return "CKA" if short else "linear CKA"
    if measure.startswith("rsa_"):
        rdm, _, compare = measure.removeprefix("rsa_").partition("_")
        return "RSA" if short else f"RSA ({rdm} RDM, {compare})"
    return measure


def summary_rows(rows: list[dict[str, Any]], measure: str) -> list[dict[str, Any]]:
    """The ``domain_change`` rows of ``measure`` against the mean out-of-domain change (or the only
    out-of-domain task), by layer."""
    chosen = [r for r in rows if r["measure"] == measure]
    mean = [r for r in chosen if r["out_domain"] == "mean"]
    return sorted(mean or chosen, key=lambda r: int(r["layer"]))


def _difference(row: dict[str, Any]) -> Difference:
    return Difference(row["difference"], row.get("ci_low"), row.get("ci_high"))


def _at(layers: list[int]) -> str:
    if not layers:
        return "none"
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {format_layers(layers)}"


def _split(rows: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Layers where in-domain inputs changed measurably more, and where out-of-domain ones did."""
    more_in = [int(r["layer"]) for r in rows if _difference(r).gain]
    more_out = [int(r["layer"]) for r in rows if _difference(r).loss]
    return more_in, more_out


def change_sentence(rows: list[dict[str, Any]], label: str) -> str:
    """What the run measured for one measure: where in-domain inputs changed measurably more or less.

    ``rows`` are :func:`summary_rows` (``difference`` = in-domain change minus out-of-domain change,
    change = 1 - similarity, with ``ci_low``/``ci_high``); the top layer's difference is spelled out.
    """
    top = max(rows, key=lambda r: int(r["layer"]))
    diff = _difference(top)
    if not diff.interval():
        return (
            f"By {label}, the in-domain change minus the out-of-domain change (1 − {label}) at the top layer "
            f"({top['layer']}) is {float(top['difference']):+.3f}, with no interval ({label} is not "
            "bootstrapped), so this run cannot tell whether it is measurable."
        )
    more_in, more_out = _split(rows)
    if more_in or more_out:
        where = (
            f"in-domain inputs changed measurably more than out-of-domain ones at {_at(more_in)} and "
            f"measurably less at {_at(more_out)}"
        )
    else:
        where = "no layer shows a measurable difference between in-domain and out-of-domain change"
    words = diff.words(gain="adds", loss="removes")
    return (
        f"By {label}, {where}; at the top layer ({top['layer']}), in the change 1 − {label} (in hundredths), "
        f"being in domain {words}."
    )


def merchant_verdict(rows: list[dict[str, Any]], label: str = "CKA") -> str:
    """Whether this run agrees with Merchant et al. (2020) in the top layers (those above ``L / 2``).

    The run agrees when in-domain inputs changed measurably more than out-of-domain ones at some top
    layer and out-of-domain ones measurably more at none, disagrees in the opposite case, and cannot
    tell when no top layer's interval excludes 0 or both directions occur.
    """
    n_layers = max(int(r["layer"]) for r in rows)
    top = [r for r in rows if int(r["layer"]) > n_layers / 2]
    more_in, more_out = _split(top)
    agrees: bool | None = None
    if more_in and not more_out:
        agrees = True
    elif more_out and not more_in:
        agrees = False
    if more_in or more_out:
        detail = (
            f"in-domain inputs changed measurably more at {_at(more_in)}, "
            f"out-of-domain ones at {_at(more_out)}"
        )
    else:
        detail = "the interval of the difference in change contains 0 at each of them"
    layers = [int(r["layer"]) for r in top]
    return f"{MERCHANT}; {verdict(agrees)}: by {label}, in the top {_at(layers)}, {detail}."


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("domains")
    if not rows:
        return None
    change = sec.table("domain_change")
    grouped: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    inside_name = next(r["domain"] for r in rows if r["in_domain"] == "True")
    for row in rows:
        grouped[row["measure"]][row["domain"]].append(row)
    figures, sentences = [], []
    gaps: dict[str, Curve] = {}
    bands: dict[str, tuple[list[int], list[float], list[float]]] = {}
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
        summary = summary_rows(change, measure)
        if not summary:
            continue
        layers = [int(r["layer"]) for r in summary]
        gaps[label] = (layers, [float(r["difference"]) for r in summary])
        if all(_difference(r).interval() for r in summary):
            low, high = [float(r["ci_low"]) for r in summary], [float(r["ci_high"]) for r in summary]
            bands[label] = (layers, low, high)
        sentences.append(change_sentence(summary, measure_label(measure, short=True)))
    linear = summary_rows(change, "linear_cka")
    if linear:
        sentences.insert(0, merchant_verdict(linear))
    if gaps:
        fig = plot_layer_curves(
            gaps,
            ylabel="in-domain − out-of-domain change",
            title="Above 0: in-domain inputs changed more",
        )
        ax = fig.axes[0]
        for line in ax.get_lines():
            if line.get_label() in bands:
                ax.fill_between(*bands[str(line.get_label())], color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0.0, color="grey", linewidth=1)
        figures.append(sec.figure("domains_gap", fig))
    n_boot = next((r["n_boot"] for r in change if r["n_boot"]), None)
    return {
        "figures": figures,
        "sentences": sentences,
        "in_domain": inside_name,
        "n_boot": n_boot,
        "level": f"{100 * sec.confidence:g}%",
        "several": any(r["out_domain"] == "mean" for r in change),
    }
