"""Stages are found by discovery (the package scan and the ``tunescope.stages`` entry points) and run in
the order their ``needs``/``after`` give; a third-party stage runs, is recorded and is reported."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tunescope._io import read_csv
from tunescope.errors import InputError
from tunescope.pipeline import STAGES, AnalyzeConfig, Stage, analyze, ordered, read_manifest
from tunescope.stages import discover
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

BUILTIN = (
    "finetune",
    "layers",
    "similarity",
    "truncation",
    "ablation",
    "ffn",
    "probes",
    "variability",
    "selection",
    "domains",
)


def test_builtin_stages_are_discovered_in_the_order_they_declare():
    discover()
    assert set(BUILTIN) <= set(STAGES)
    order = ordered(BUILTIN)
    assert order == list(BUILTIN)
    for name in BUILTIN:  # every declared dependency comes first
        assert all(order.index(dep) < order.index(name) for dep in STAGES[name].needs)
        assert STAGES[name].package == f"tunescope.stages.{name}"


def test_ordered_follows_needs_whatever_the_order_asked(monkeypatch):
    discover()
    assert ordered(["selection", "variability", "layers"]) == ["layers", "variability", "selection"]
    monkeypatch.setitem(STAGES, "a", Stage("a", "A", lambda ctx: [], needs=("b",)))
    monkeypatch.setitem(STAGES, "b", Stage("b", "B", lambda ctx: [], needs=("a",)))
    with pytest.raises(InputError, match="cycle"):
        ordered(["a", "b"])


PACKAGE = """
from tunescope.pipeline import Stage, Table


def run(ctx):
    reps = ctx.representations()
    rows = [{"layer": layer, "rows": int(reps[layer].shape[0])} for layer in reps.layers]
    return [Table("row_counts", ("layer", "rows"), rows)]


STAGE = Stage(name="row_counts", title="Rows per layer", run=run, needs=("layers",))
"""

SECTION = """
def build(sec):
    rows = sec.table("row_counts")
    return {"sentence": f"{len(rows)} layers counted by a plug-in stage."} if rows else None
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A stage package installed the way a third-party distribution would declare it."""
    site = tmp_path / "site"
    package = site / "rowcount_stage"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    (package / "section.py").write_text(textwrap.dedent(SECTION))
    (package / "section.html.j2").write_text('<p class="lead">{{ section.sentence }}</p>\n')
    info = site / "rowcount_stage-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rowcount-stage\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tunescope.stages]\nrow_counts = rowcount_stage\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    STAGES.pop("row_counts", None)
    sys.modules.pop("rowcount_stage", None)
    sys.modules.pop("rowcount_stage.section", None)


def test_entry_point_stage_runs_ordered_and_reported(tmp_path, plugin):
    discover()
    assert STAGES["row_counts"].package == "rowcount_stage"
    assert ordered(["row_counts", "layers"]) == ["layers", "row_counts"]
    model = save_model(tiny_model("bert", num_layers=2), tmp_path / "model")
    config = AnalyzeConfig(
        out=tmp_path / "run",
        model=model,
        limit=8,
        batch_size=8,
        device="cpu",
        finetune=False,
        stages=("row_counts", "layers"),
    )
    root = analyze(config, progress=False)
    assert read_manifest(root)["stages"]["row_counts"]["status"] == "done"
    assert read_csv(root / "results" / "row_counts.csv") == [
        {"layer": str(layer), "rows": "8"} for layer in (0, 1, 2)
    ]
    html = (root / "report.html").read_text()
    assert "3 layers counted by a plug-in stage." in html
    assert html.index('id="layers"') < html.index('id="row_counts"')
