"""Build ``report.html`` from a run folder's manifest and result tables."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tunescope._io import write_text
from tunescope.pipeline import STAGES, load_table, read_manifest
from tunescope.report.figures import plot_layer_curves, plot_similarity_matrix

__all__ = ["SECTIONS", "build_report"]

SectionBuilder = Callable[["_Section"], dict[str, Any] | None]
SECTIONS: dict[str, SectionBuilder] = {}

_STAT_LABELS = {
    "mean_norm": "mean vector norm",
    "norm_std": "std of vector norms",
    "mean_cosine": "mean cosine between examples",
    "top_pc_fraction": "variance on the first PC",
    "participation_ratio": "participation ratio",
}


_MEASURE_LABELS = {"linear_cka": "linear CKA", "rbf_cka": "RBF CKA", "rsa": "RSA"}


def _measure_label(measure: str) -> str:
    name, _, flag = measure.partition(":")
    label = _MEASURE_LABELS.get(name, name.replace("_", " "))
    return f"{flag} {label}" if flag else label


class _Section:
    """What a section builder gets: the run folder, its manifest, and a way to save figures."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root, self.manifest = root, manifest

    def table(self, name: str) -> list[dict[str, str]]:
        return load_table(self.root, name)

    def figure(self, name: str, fig: Figure) -> dict[str, str]:
        """Save ``fig`` as ``figures/<name>.png`` and return it inlined for the HTML."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        data = buffer.getvalue()
        (self.root / "figures").mkdir(exist_ok=True)
        (self.root / "figures" / f"{name}.png").write_bytes(data)
        return {"name": name, "src": "data:image/png;base64," + base64.b64encode(data).decode()}


def _section(name: str) -> Callable[[SectionBuilder], SectionBuilder]:
    def register(builder: SectionBuilder) -> SectionBuilder:
        SECTIONS[name] = builder
        return builder

    return register


@_section("layers")
def _layers(sec: _Section) -> dict[str, Any] | None:
    rows = sec.table("layer_stats")
    if not rows:
        return None
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    for row in rows:
        layers, values = curves[row["statistic"]].setdefault(row["model"], ([], []))
        layers.append(int(row["layer"]))
        values.append(float(row["value"]))
    figures = [
        sec.figure(
            f"layers_{stat}",
            plot_layer_curves(
                per_model, ylabel=_STAT_LABELS.get(stat, stat), title=_STAT_LABELS.get(stat, stat)
            ),
        )
        for stat, per_model in curves.items()
    ]
    cos_layers, cos = curves["mean_cosine"]["base"]
    top = cos_layers[int(np.argmax(cos))]
    sentence = (
        f"In the pre-trained model, representations are most anisotropic at layer {top} "
        f"(mean cosine {max(cos):.2f} between different examples) and least at layer "
        f"{cos_layers[int(np.argmin(cos))]} ({min(cos):.2f})."
    )
    return {"figures": figures, "sentence": sentence}


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


@_section("similarity")
def _similarity(sec: _Section) -> dict[str, Any] | None:
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
        for label in [_measure_label(m)]
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
            spans = ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in found)
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


@_section("truncation")
def _truncation(sec: _Section) -> dict[str, Any] | None:
    rows = sec.table("truncation")
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: int(r["layers_kept"]))
    kept = [int(r["layers_kept"]) for r in rows]
    values = [float(r["value"]) for r in rows]
    params = [int(r["params"]) for r in rows]
    metric = rows[0]["metric"]
    fig = plot_layer_curves({"tuned": (kept, values)}, ylabel=metric, title=f"{metric} vs layers kept")
    fig.axes[0].set_xlabel("layers kept")
    full_value, full_params = values[-1], params[-1]
    # the fewest layers whose metric is within 1 point of the full model's
    k = next(k for k, v in zip(kept, values, strict=True) if v >= full_value - 0.01)
    i = kept.index(k)
    saved = 1 - params[i] / full_params
    cost = 100 * (full_value - values[i])
    if k == kept[-1]:
        sentence = (
            f"Every layer counts here: dropping even the top layer costs more than 1 point of {metric}."
        )
    else:
        sentence = (
            f"Dropping the top {kept[-1] - k} layer(s) costs {cost:.1f} points of {metric} "
            f"({values[i]:.3f} vs {full_value:.3f}) and saves {100 * saved:.0f}% of the parameters, "
            "with no retraining."
        )
    return {"figures": [sec.figure("truncation", fig)], "sentence": sentence, "rows": rows}


def build_report(run_dir: str | Path) -> Path:
    """Draw every section's figures and write ``RUN/report.html``; returns its path."""
    import jinja2

    from tunescope import stages as _stages  # noqa: F401  (stage titles)

    root = Path(run_dir)
    manifest = read_manifest(root)
    sec = _Section(root, manifest)
    sections = []
    for name, stage in STAGES.items():
        builder = SECTIONS.get(name)
        content = builder(sec) if builder is not None else None
        status = manifest.get("stages", {}).get(name, {})
        if content is not None:
            sections.append(
                {
                    "name": name,
                    "title": stage.title,
                    "description": stage.description,
                    "seconds": status.get("seconds"),
                    **content,
                }
            )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tunescope.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(manifest=manifest, sections=sections)
    path = root / "report.html"
    write_text(path, html)
    return path
