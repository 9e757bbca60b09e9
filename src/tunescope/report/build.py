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
    return _MEASURE_LABELS.get(measure, measure.replace("_", " "))


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


@_section("similarity")
def _similarity(sec: _Section) -> dict[str, Any] | None:
    rows = sec.table("cka")
    if not rows:
        return None
    blocks: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in sec.table("blocks"):
        blocks[row["model"]].append((int(row["first_layer"]), int(row["last_layer"])))
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[(row["model_a"], row["model_b"], row["measure"])].append(row)
    figures, sentences = [], []
    for (model_a, model_b, measure), group in groups.items():
        layers_a = sorted({int(r["layer_a"]) for r in group})
        layers_b = sorted({int(r["layer_b"]) for r in group})
        matrix = np.zeros((len(layers_a), len(layers_b)))
        for r in group:
            matrix[layers_a.index(int(r["layer_a"])), layers_b.index(int(r["layer_b"]))] = float(r["value"])
        same = model_a == model_b
        fig = plot_similarity_matrix(
            matrix,
            layers_a=layers_a,
            layers_b=layers_b,
            label_a=model_a,
            label_b=model_b,
            measure=_measure_label(measure),
            blocks=blocks.get(model_a, []) if same else (),
        )
        figures.append(sec.figure(f"{measure}_{model_a}_vs_{model_b}", fig))
        if same:
            found = blocks.get(model_a, [])
            spans = ", ".join(f"{a}–{b}" for a, b in found)
            adjacent = np.diag(matrix, 1)
            sentences.append(
                f"{model_a}: layers fall into {len(found)} block(s) ({spans}); adjacent layers have "
                f"{_measure_label(measure)} between {adjacent.min():.2f} and {adjacent.max():.2f}."
            )
        else:
            diagonal = [matrix[layers_a.index(x), layers_b.index(x)] for x in layers_a if x in layers_b]
            low = int(np.argmin(diagonal))
            sentences.append(
                f"{model_a} vs {model_b}: the same layer's {_measure_label(measure)} falls to "
                f"{diagonal[low]:.2f} at layer {layers_a[low]}."
            )
    return {"figures": figures, "sentences": sentences}


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
