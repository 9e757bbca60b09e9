"""Report section of the ``similarity`` stage: layer-by-layer matrices, blocks, same-layer change."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from tunescope.locations import format_layers
from tunescope.report._section import Section
from tunescope.report.figures import plot_layer_curves, plot_similarity_matrix
from tunescope.similarity.blocks import MARGIN_THRESHOLD

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


def _test_words(row: dict[str, str]) -> str:
    """``margin 0.14, bootstrap p = 0.01`` (the p-value only when the table has one)."""
    words = f"margin {float(row['margin']):.2f}"
    if row.get("p_value"):
        words += f", bootstrap p = {float(row['p_value']):.3f} over {row['n_boot']} resamples"
    return words


def _block_sentence(model: str, label: str, found: list[tuple[int, int]], row: dict[str, str]) -> str:
    if row["significant"] == "True":
        spans = "; ".join(format_layers(range(a, b + 1)) for a, b in found)
        return (
            f"{model}: by {label}, the layers fall into {len(found)} blocks ({spans}), which explain more of "
            f"the similarity than a smooth decay with layer distance ({_test_words(row)})."
        )
    return (
        f"{model}: by {label}, no block structure beyond a smooth decay with layer distance "
        f"({_test_words(row)}; the threshold is a margin of {MARGIN_THRESHOLD})."
    )


def _paper_sentence(block_rows: dict[tuple[str, str], dict[str, str]], tuned: str | None) -> str:
    """Whether this run agrees with Phang et al. (2021), from the tuned model's block test."""
    row = block_rows.get((tuned, "linear_cka")) if tuned else None
    claim = "Phang et al. (2021) find block structure in the layers of fine-tuned models"
    if row is None or not row.get("p_value"):
        return (
            f"{claim}; this run cannot tell (no bootstrap test of the fine-tuned model's linear CKA blocks)."
        )
    if row["significant"] == "True":
        return f"{claim}; this run agrees: {tuned}'s blocks beat a smooth decay ({_test_words(row)})."
    return (
        f"{claim}; this run disagrees: {tuned}'s similarity is explained by a smooth decay "
        f"({_test_words(row)})."
    )


def pooling_sentences(rows: list[dict[str, str]]) -> list[str]:
    """Where the block conclusions differ between sentence poolings (rows of every pooling of blocks.csv).

    One sentence per (model, measure) whose blocks, or whose significance, differ between poolings;
    one sentence saying the poolings agree when none differ.
    """
    poolings = list(dict.fromkeys(r["pooling"] for r in rows if r.get("pooling")))
    if len(poolings) < 2:
        return []
    found: dict[tuple[str, str], dict[str, tuple[str, bool]]] = defaultdict(dict)
    for model, measure in dict.fromkeys((r["model"], r["measure"]) for r in rows):
        for pooling in poolings:
            mine = [r for r in rows if (r["model"], r["measure"], r["pooling"]) == (model, measure, pooling)]
            if mine:
                spans = " / ".join(
                    format_layers(range(int(r["first_layer"]), int(r["last_layer"]) + 1)) for r in mine
                )
                found[model, measure][pooling] = (spans, mine[0]["significant"] == "True")
    sentences = []
    for (model, measure), by in found.items():
        if len(set(by.values())) > 1:
            parts = [
                f"under {p} pooling {spans}{'' if significant else ' (not beyond a smooth decay)'}"
                for p, (spans, significant) in by.items()
            ]
            sentences.append(
                f"The pooling changes the conclusion for {model} ({measure_label(measure)}): the blocks are "
                + "; ".join(parts)
                + "."
            )
    if not sentences:
        sentences.append(f"The {' and '.join(poolings)} poolings find the same blocks in every model.")
    return sentences


def build(sec: Section) -> dict[str, Any] | None:
    cka, rsa = sec.table("cka"), sec.table("rsa")
    if not cka and not rsa:
        return None
    blocks: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    block_rows: dict[tuple[str, str], dict[str, str]] = {}
    for row in sec.table("blocks"):
        blocks[(row["model"], row["measure"])].append((int(row["first_layer"]), int(row["last_layer"])))
        block_rows[(row["model"], row["measure"])] = row
    change = {
        (r["model_a"], r["model_b"], r["measure"], int(r["layer"])): r for r in sec.table("layer_change")
    }
    tuned = next((r["model_b"] for r in cka if r["model_a"] != r["model_b"]), None)
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
        test_row = block_rows.get((model_a, measure)) if same else None
        drawn = found if test_row is not None and test_row.get("significant") == "True" else []
        fig = plot_similarity_matrix(
            matrix,
            layers_a=layers_a,
            layers_b=layers_b,
            label_a=model_a,
            label_b=model_b,
            measure=label,
            blocks=drawn,
        )
        figures.append(sec.figure(f"{measure}_{model_a}_vs_{model_b}".replace(":", "_"), fig))
        if same and found and test_row is not None:
            adjacent = np.diag(matrix, 1)
            sentences.append(
                f"{_block_sentence(model_a, label, found, test_row)} Adjacent layers score between "
                f"{np.nanmin(adjacent):.2f} and {np.nanmax(adjacent):.2f}."
            )
        elif not same:
            shared, values = _same_layer(layers_a, layers_b, matrix)
            per_layer[label] = (shared, values)
            low, high = int(np.argmin(values)), int(np.argmax(values))
            sentences.append(
                f"{model_a} vs {model_b}: the same layer's {label} is lowest at layer {shared[low]} "
                f"({values[low]:.2f}{_interval(change, model_a, model_b, measure, shared[low])}; the layer "
                f"that changed most) and highest at layer {shared[high]} "
                f"({values[high]:.2f}{_interval(change, model_a, model_b, measure, shared[high])})."
            )
    if per_layer:
        pair = next(k for k in labelled if k[0][0] != k[0][1])[0]
        fig = plot_layer_curves(
            per_layer,
            ylabel=f"{pair[0]} vs {pair[1]}, same layer",
            title="How much each layer changed (1 = unchanged)",
        )
        figures.insert(0, sec.figure("same_layer_similarity", fig))
    if block_rows:
        sentences.append(_paper_sentence(block_rows, tuned))
    sentences += pooling_sentences(sec.table("blocks", all_poolings=True))
    return {"figures": figures, "sentences": sentences}


def _interval(change: dict[tuple[Any, ...], dict[str, str]], a: str, b: str, measure: str, layer: int) -> str:
    """``, 95% interval 0.61-0.66 over 1000 resamples`` when layer_change.csv has the layer, else ``""``."""
    row = change.get((a, b, measure, layer))
    if row is None:
        return ""
    return (
        f", bootstrap interval {float(row['ci_low']):.3f} to {float(row['ci_high']):.3f} over "
        f"{row['n_boot']} resamples of the examples"
    )
