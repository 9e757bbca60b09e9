"""Report section of the ``similarity`` stage: layer-by-layer matrices, blocks, same-layer change."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from tunescope.locations import format_layers
from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves, plot_similarity_matrix

_MEASURE_LABELS = {"linear_cka": "linear CKA", "rbf_cka": "RBF CKA", "rsa": "RSA"}


def measure_label(measure: str) -> str:
    """``"linear_cka:debiased"`` -> ``"debiased linear CKA"``."""
    name, _, flag = measure.partition(":")
    label = _MEASURE_LABELS.get(name, name.replace("_", " "))
    return f"{flag} {label}" if flag else label


def _matrices(
    rows: list[dict[str, str]], kind: tuple[str, ...]
) -> dict[tuple[str, ...], tuple[list[int], list[int], np.ndarray]]:
    """Group tidy rows into matrices keyed by (model_a, model_b, *kind columns)."""
    groups: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[(row["model_a"], row["model_b"], *(row[k] for k in kind))].append(row)
    out = {}
    for key, group in groups.items():
        layers_a = sorted({int(r["layer_a"]) for r in group})
        layers_b = sorted({int(r["layer_b"]) for r in group})
        matrix = np.full((len(layers_a), len(layers_b)), np.nan)
        for r in group:
            matrix[layers_a.index(int(r["layer_a"])), layers_b.index(int(r["layer_b"]))] = float(r["value"])
        out[key] = (layers_a, layers_b, matrix)
    return out


def _same_layer(
    layers_a: list[int], layers_b: list[int], matrix: np.ndarray
) -> tuple[list[int], list[float]]:
    shared = [x for x in layers_a if x in layers_b]
    return shared, [float(matrix[layers_a.index(x), layers_b.index(x)]) for x in shared]


def build(sec: Section) -> dict[str, Any] | None:
    cka, rsa = sec.table("cka"), sec.table("rsa")
    if not cka and not rsa:
        return None
    blocks: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for row in sec.table("blocks"):
        blocks[(row["model"], row["measure"])].append((int(row["first_layer"]), int(row["last_layer"])))
    figures, sentences = [], []
    per_layer: dict[str, tuple[list[int], list[float]]] = {}
    labelled = [
        ((a, b, m), label, v)
        for (a, b, m), v in _matrices(cka, ("measure",)).items()
        for label in [measure_label(m)]
    ]
    labelled += [
        ((a, b, f"rsa_{r}_{c}"), f"RSA ({r} RDM, {c})", v)
        for (a, b, r, c), v in _matrices(rsa, ("rdm", "compare")).items()
    ]
    for (model_a, model_b, measure), label, (layers_a, layers_b, matrix) in labelled:
        same = model_a == model_b
        found = blocks.get((model_a, measure), []) if same else []
        fig = plot_similarity_matrix(
            matrix,
            layers_a=layers_a,
            layers_b=layers_b,
            label_a=model_a,
            label_b=model_b,
            measure=label,
            blocks=found,
        )
        figures.append(sec.figure(f"{measure}_{model_a}_vs_{model_b}".replace(":", "_"), fig))
        if same and found:
            spans = "; ".join(format_layers(range(a, b + 1)) for a, b in found)
            adjacent = np.diag(matrix, 1)
            sentences.append(
                f"{model_a}: by {label}, the layers fall into {len(found)} block(s) ({spans}); "
                f"adjacent layers score between {np.nanmin(adjacent):.2f} and {np.nanmax(adjacent):.2f}."
            )
        elif not same:
            shared, values = _same_layer(layers_a, layers_b, matrix)
            per_layer[label] = (shared, values)
            low, high = int(np.argmin(values)), int(np.argmax(values))
            sentences.append(
                f"{model_a} vs {model_b}: the same layer's {label} is lowest at layer {shared[low]} "
                f"({values[low]:.2f}; the layer that changed most) and highest at layer {shared[high]} "
                f"({values[high]:.2f})."
            )
    if per_layer:
        pair = next(k for k in labelled if k[0][0] != k[0][1])[0]
        fig = plot_layer_curves(
            per_layer,
            ylabel=f"{pair[0]} vs {pair[1]}, same layer",
            title="How much each layer changed (1 = unchanged)",
        )
        figures.insert(0, sec.figure("same_layer_similarity", fig))
    return {"figures": figures, "sentences": sentences}
