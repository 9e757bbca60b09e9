"""The report keeps each drawn section and reuses it only while its tables, config and code are unchanged."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tunescope._io import read_csv, sha256_file, write_csv
from tunescope.errors import RunFolderError
from tunescope.pipeline import AnalyzeConfig, analyze
from tunescope.report import _reuse, build_report
from tunescope.report._section import Section
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = pytest.mark.models

STAGES = ("finetune", "layers", "similarity", "truncation", "variability")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run folder of a tiny BERT through the stages that draw figures, report built once."""
    model = save_model(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-bert"))
    config = AnalyzeConfig(
        out=tmp_path_factory.mktemp("run") / "run",
        model=model,
        limit=40,
        train_limit=64,
        batch_size=16,
        device="cpu",
        epochs=1,
        patience=None,
        stages=STAGES,
    )
    return analyze(config, progress=False)


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Figure name -> times a section builder drew it during the test."""
    counts: Counter[str] = Counter()
    original = Section.figure

    def counting(self: Section, name: str, fig):  # type: ignore[no-untyped-def]
        counts[name] += 1
        return original(self, name, fig)

    monkeypatch.setattr(Section, "figure", counting)
    return counts


def _snapshot(root: Path) -> dict[str, bytes]:
    files = {"report.html": (root / "report.html").read_bytes()}
    files.update({p.name: p.read_bytes() for p in sorted((root / "figures").glob("*.png"))})
    return files


def _rewrite_table(root: Path, name: str, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite ``results/<name>.csv`` through ``change(rows)`` and record its new hash, as a rerun would."""
    path = root / "results" / f"{name}.csv"
    rows = read_csv(path)
    write_csv(path, change(rows), list(rows[0]))
    manifest = json.loads((root / "manifest.json").read_text())
    for record in manifest["stages"].values():
        for output in record.get("outputs", []):
            if output.get("path") == f"results/{name}.csv":
                output["sha256"] = sha256_file(path)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_an_unchanged_run_draws_nothing_and_gives_the_same_report(run: Path, drawn: Counter[str]) -> None:
    before = _snapshot(run)
    assert len(before) > 5  # the report and several figures
    build_report(run)
    assert drawn == Counter()
    assert _snapshot(run) == before


def test_a_changed_table_redraws_its_section_only(run: Path, drawn: Counter[str]) -> None:
    build_report(run)  # every section kept
    _rewrite_table(
        run, "layer_stats", lambda rows: [{**r, "value": str(float(r["value"]) + 1)} for r in rows]
    )
    build_report(run)
    assert drawn and all(name.startswith("layers_") for name in drawn)
    kept = _snapshot(run)
    shutil.rmtree(run / "cache" / "report")
    build_report(run)  # all drawn afresh
    assert _snapshot(run) == kept
    assert any(not name.startswith("layers_") for name in drawn)


def test_a_damaged_table_raises_even_when_its_section_is_kept(run: Path) -> None:
    path = run / "results" / "cka.csv"
    path.write_bytes(path.read_bytes().replace(b"0.", b"1.", 1))
    with pytest.raises(RunFolderError, match=r"cka\.csv is damaged"):
        build_report(run)


def test_other_code_or_a_lost_figure_draws_again(
    run: Path, drawn: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(run)
    lost = sorted((run / "figures").glob("layers_*.png"))[0]
    lost.unlink()
    build_report(run)
    assert lost.name[: -len(".png")] in drawn
    assert set(drawn) == {name for name in drawn if name.startswith("layers_")}
    assert _snapshot(run) == before
    drawn.clear()
    monkeypatch.setattr(_reuse, "code_digest", lambda: "another version of tunescope")
    build_report(run)
    assert set(drawn) == {name[: -len(".png")] for name in before if name.endswith(".png")}
    assert _snapshot(run) == before


def test_a_table_that_appears_redraws_the_sections_that_asked_for_it(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    entries = {p.stem: json.loads(p.read_text()) for p in (run / "cache" / "report").glob("*.json")}
    asked = {name for entry in entries.values() for name in entry["tables"]}
    vouched = {
        Path(o["path"]).stem for record in manifest["stages"].values() for o in record.get("outputs", [])
    }
    assert asked - vouched, "some section asks for a table this run has not written"
    missing = sorted(asked - vouched)[0]
    stage = next(s for s, e in entries.items() if missing in e["tables"])
    assert entries[stage]["tables"][missing] is None
    assert _reuse.load(run, stage, manifest, {**_vouched(manifest), missing: {"path": "x"}}) is None
    assert _reuse.load(run, stage, manifest, _vouched(manifest)) is not None


def _vouched(manifest):  # type: ignore[no-untyped-def]
    from tunescope.runfolder import vouched_tables

    return vouched_tables(manifest)
