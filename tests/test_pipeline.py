"""analyze(): run folder, manifest, tables, report, resume, and the report rebuilt from tables alone."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from tunescope._io import read_csv
from tunescope.data import get_task
from tunescope.errors import InputError, UnknownNameError
from tunescope.pipeline import STAGES, AnalyzeConfig, analyze, read_manifest
from tunescope.report import build_report
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random BERT saved as an HF folder, as a user's model would be."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    encoder = tiny_model("bert", num_layers=3)
    return save_model(encoder, folder)


def _config(tmp_path, model, **kwargs):
    options = {"limit": 40, "train_limit": 64, "batch_size": 16, "device": "cpu", **kwargs}
    options = {"epochs": 1, "patience": None, **options}  # one epoch, as before the demo's defaults grew
    return AnalyzeConfig(out=tmp_path / "run", model=model, **options)


def test_analyze_writes_run_folder(tmp_path, tiny_folder):
    root = analyze(_config(tmp_path, tiny_folder), progress=False)
    manifest = read_manifest(root)
    assert set(manifest["stages"]) == set(STAGES)
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert manifest["models"]["base"]["family"] == "bert"
    assert manifest["config"]["task"] == "movie-sentiment"
    stats = read_csv(root / "results" / "layer_stats.csv")
    assert {r["layer"] for r in stats} == {"0", "1", "2", "3"}
    cka = read_csv(root / "results" / "cka.csv")
    assert list(cka[0]) == [
        "pooling",
        "model_a",
        "layer_a",
        "model_b",
        "layer_b",
        "measure",
        "split",
        "value",
    ]
    assert len(cka) == 3 * 16  # base x base, tuned x tuned, base x tuned
    within = [r for r in cka if r["model_a"] == r["model_b"]]
    diagonal = [float(r["value"]) for r in within if r["layer_a"] == r["layer_b"]]
    assert diagonal == pytest.approx([1.0] * 8)  # every layer is identical to itself, in each model
    html = (root / "report.html").read_text()
    assert "Layer similarity" in html and "data:image/png;base64," in html
    assert '<img src="figures' not in html  # self-contained
    assert list((root / "figures").glob("*.png"))
    assert not list(root.rglob("*.tmp"))


def test_two_models_measures_and_rsa(tmp_path, tiny_folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("tiny-bert-other")
    encoder = tiny_model("bert", num_layers=3, seed=1)
    save_model(encoder, other)
    config = _config(
        tmp_path,
        tiny_folder,
        tuned=str(other),
        options={
            "similarity": {"measures": ("linear_cka", "linear_cka:debiased"), "rsa": ("cosine", "pearson")}
        },
        stages=("similarity",),
    )
    root = analyze(config, progress=False)
    cka = read_csv(root / "results" / "cka.csv")
    pairs = {(r["model_a"], r["model_b"], r["measure"]) for r in cka}
    assert pairs == {
        (a, b, m)
        for a, b in [("base", "base"), ("tuned", "tuned"), ("base", "tuned")]
        for m in ("linear_cka", "linear_cka:debiased")
    }
    assert len(cka) == 3 * 2 * 16
    rsa = read_csv(root / "results" / "rsa.csv")
    columns = ["pooling", "model_a", "layer_a", "model_b", "layer_b", "rdm", "compare", "split", "value"]
    assert list(rsa[0]) == columns
    assert {(r["rdm"], r["compare"]) for r in rsa} == {("cosine", "pearson")}
    # the table's numbers are the library's numbers on the same representations
    from tunescope.extract import extract
    from tunescope.models import load_encoder
    from tunescope.similarity import linear_cka

    examples = get_task(config.task).load(config.split, limit=40)
    a = extract(load_encoder(tiny_folder), examples, pooling="mean", max_length=128, progress=False)
    b = extract(load_encoder(str(other)), examples, pooling="mean", max_length=128, progress=False)
    row = next(
        r
        for r in cka
        if (r["model_a"], r["layer_a"], r["model_b"], r["layer_b"], r["measure"])
        == ("base", "2", "tuned", "3", "linear_cka")
    )
    assert float(row["value"]) == pytest.approx(float(linear_cka(a[2], b[3])), abs=1e-6)  # float32 inputs
    assert "How much each layer changed" not in (root / "report.html").read_text()  # a figure, not text
    assert (root / "figures" / "same_layer_similarity.png").exists()


def test_truncation_curve_of_a_tuned_classifier(tmp_path, tiny_folder, tmp_path_factory):
    from tunescope.inference import evaluate
    from tunescope.models import load_classifier
    from tunescope.surgery import count_parameters, truncate

    folder = tmp_path_factory.mktemp("tiny-bert-classifier")
    classifier = tiny_model("bert", task="classifier", num_labels=2, num_layers=3, seed=2)
    save_model(classifier, folder)
    config = _config(tmp_path, tiny_folder, tuned=str(folder), stages=("truncation",))
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "truncation.csv")
    assert [int(r["layers_kept"]) for r in rows] == [3, 2, 1]
    from tunescope.inference import predictions
    from tunescope.truncation import COLUMNS

    assert tuple(rows[0]) == ("seed", *COLUMNS)
    examples = get_task(config.task).load(config.split, limit=40)
    tuned = load_classifier(str(folder))
    full = predictions(tuned, examples)
    for row in rows:  # each value is the truncated model's own evaluation, its intervals resampled from it
        model = truncate(tuned, int(row["layers_kept"]))
        assert float(row["value"]) == pytest.approx(evaluate(model, examples)["accuracy"])
        assert int(row["params"]) == count_parameters(model)
        found = predictions(model, examples)
        ci = found.interval("accuracy", n_boot=config.n_boot, level=config.confidence, seed=config.seed)
        delta = full.difference(found, "accuracy", n_boot=config.n_boot, seed=config.seed)
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((ci.low, ci.high))
        assert float(row["delta"]) == pytest.approx(delta.value)
        assert (float(row["delta_ci_low"]), float(row["delta_ci_high"])) == pytest.approx(
            (delta.low, delta.high)
        )
    # the full model against itself: no difference, exactly
    assert (float(rows[0]["delta_ci_low"]), float(rows[0]["delta_ci_high"])) == (0.0, 0.0)
    assert int(rows[0]["params"]) > int(rows[-1]["params"])
    html = (root / "report.html").read_text()
    assert "Dropping top layers" in html and "layers kept" in html


def test_truncation_without_tuned_model_is_a_note(tmp_path, tiny_folder):
    root = analyze(_config(tmp_path, tiny_folder, finetune=False, stages=("truncation",)), progress=False)
    assert not (root / "results" / "truncation.csv").exists()
    assert any("no fine-tuned model" in note for note in read_manifest(root)["notes"])


def test_truncation_of_a_base_model_given_as_tuned_is_skipped(tmp_path, tiny_folder):
    config = _config(tmp_path, tiny_folder, tuned=tiny_folder, stages=("truncation",))
    root = analyze(config, progress=False)
    assert not (root / "results" / "truncation.csv").exists()
    assert any("truncation: skipped" in n and "no classifier head" in n for n in read_manifest(root)["notes"])


def test_analyze_fine_tunes_the_base_model_once(tmp_path, tiny_folder, monkeypatch):
    import importlib

    finetune_module = importlib.import_module("tunescope.finetune")
    from tunescope.inference import evaluate
    from tunescope.models import load_classifier
    from tunescope.surgery import truncate

    config = _config(tmp_path, tiny_folder, stages=("finetune", "truncation"))
    root = analyze(config, progress=False)
    folder = root / "models" / "tuned"
    assert (folder / "config.json").exists()
    manifest = read_manifest(root)
    assert manifest["models"]["tuned"]["path"] == str(folder)
    assert manifest["trained"]["tuned"]["path"] == str(folder)
    (row,) = read_csv(root / "results" / "finetune.csv")
    assert (row["model"], row["epoch"], row["metric"], row["kept"]) == ("tuned", "1", "accuracy", "True")
    # the truncation curve is the run's own fine-tuned model, cut and evaluated
    examples = get_task(config.task).load(config.split, limit=40)
    tuned = load_classifier(str(folder))
    top = read_csv(root / "results" / "truncation.csv")[-1]
    assert float(top["value"]) == pytest.approx(evaluate(truncate(tuned, 1), examples)["accuracy"])

    def no_training(*args, **kwargs):
        raise AssertionError("fine-tuned again")

    monkeypatch.setattr(finetune_module, "_train", no_training)
    (root / "results" / "finetune.csv").unlink()  # the stage runs again, and finds the model on disk
    analyze(config, progress=False, report=False)
    assert read_csv(root / "results" / "finetune.csv") == [row]


def test_no_finetune_analyses_one_model(tmp_path, tiny_folder):
    root = analyze(
        _config(tmp_path, tiny_folder, finetune=False, stages=("finetune", "layers")), progress=False
    )
    assert not (root / "models").exists()
    assert {r["model"] for r in read_csv(root / "results" / "layer_stats.csv")} == {"base"}
    assert any("--no-finetune" in note for note in read_manifest(root)["notes"])


def test_rerun_skips_done_stages_and_report_rebuilds_from_tables(tmp_path, tiny_folder, monkeypatch):
    root = analyze(_config(tmp_path, tiny_folder), progress=False)
    before = json.loads((root / "manifest.json").read_text())["stages"]

    def boom(ctx):  # a stage that ran again would fail the test
        raise AssertionError("stage ran twice")

    for name, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, name, dataclasses.replace(stage, run=boom))
    analyze(_config(tmp_path, tiny_folder), progress=False, report=False)
    after = json.loads((root / "manifest.json").read_text())["stages"]
    assert before == after
    (root / "report.html").unlink()
    build_report(root)
    assert (root / "report.html").exists()


def test_warm_rerun_does_no_model_work(tmp_path, tiny_folder):
    """A second run of the same configuration runs no module forward at all (counted by a global hook)."""
    import torch

    config = _config(tmp_path, tiny_folder)
    analyze(config, progress=False)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: calls.append(type(m)))
    try:
        analyze(config, progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_constant_layer_is_left_out_with_a_note(tmp_path, tiny_folder):
    root = analyze(_config(tmp_path, tiny_folder, pooling="cls", stages=("similarity",)), progress=False)
    layers = {r["layer_a"] for r in read_csv(root / "results" / "cka.csv")}
    assert layers == {"1", "2", "3"}  # layer 0 under cls: the same [CLS] embedding for every text
    notes = read_manifest(root)["notes"]
    assert any("layer(s) 0 give the same vector" in note for note in notes)
    assert "layer(s) 0 give the same vector" in (root / "report.html").read_text()


def test_changed_config_recomputes(tmp_path, tiny_folder):
    root = analyze(_config(tmp_path, tiny_folder, stages=("layers",)), progress=False, report=False)
    mean = read_csv(root / "results" / "layer_stats.csv")
    analyze(_config(tmp_path, tiny_folder, pooling="cls", stages=("layers",)), progress=False, report=False)
    manifest = read_manifest(root)
    assert manifest["config"]["pooling"] == "cls"
    cls = read_csv(root / "results" / "layer_stats.csv")
    assert cls != mean  # recomputed under the new pooling, not the first run's table
    (retired,) = (root / "retired").iterdir()  # the first run's table, moved aside
    assert read_csv(retired / "results" / "layer_stats.csv") == mean
    assert any("pooling 'mean' -> 'cls'" in note for note in manifest["notes"])


def test_failed_stage_leaves_no_partial_table(tmp_path, tiny_folder, monkeypatch):
    stage = STAGES["similarity"]

    def fails(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(STAGES, "similarity", type(stage)("similarity", stage.title, fails))
    with pytest.raises(KeyboardInterrupt):
        analyze(_config(tmp_path, tiny_folder, stages=("layers", "similarity")), progress=False)
    root = tmp_path / "run"
    assert (root / "results" / "layer_stats.csv").exists()
    assert not (root / "results" / "cka.csv").exists()
    assert read_manifest(root)["stages"]["similarity"]["status"] == "interrupted"


def test_bad_input(tmp_path, tiny_folder):
    with pytest.raises(UnknownNameError, match="unknown stage"):
        analyze(_config(tmp_path, tiny_folder, stages=("nope",)), progress=False)
    with pytest.raises(UnknownNameError, match="unknown task"):
        analyze(_config(tmp_path, tiny_folder, task="not-a-task"), progress=False)
    with pytest.raises(UnknownNameError, match="not-a-task"):  # checked before fine-tuning starts
        config = _config(tmp_path, tiny_folder, options={"domains": {"ood_tasks": ("not-a-task",)}})
        analyze(config, progress=False)
    with pytest.raises(UnknownNameError, match="nope"):
        analyze(_config(tmp_path, tiny_folder, options={"probes": {"tasks": ("nope",)}}), progress=False)
    with pytest.raises(InputError, match="--variability.budget"):
        _config(tmp_path, tiny_folder, options={"variability": {"budget": 0}})
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="not a tunescope run folder"):
        build_report(tmp_path)


GOLDEN = Path(__file__).with_name("golden") / "embedded-small"


@pytest.mark.slow
def test_default_analyze_on_embedded_model(tmp_path, one_thread):
    """Every stage on the embedded model; the tables equal the committed ones (tests/golden/).

    The golden tables pin the results of a small fixed configuration, so that a restructuring can show it
    changed no number. ``TUNESCOPE_WRITE_GOLDEN=1`` rewrites them (only when a change of results is meant).
    Timings (``*seconds*`` and ``speedup`` columns) are left out; floats must agree to 2e-5 relative or
    1e-6 absolute (float32 rounding differs between CPUs; see ``_assert_cell``).
    """
    config = AnalyzeConfig(
        out=tmp_path / "demo",
        limit=64,
        train_limit=128,
        epochs=1,  # the goldens' fixed configuration, whatever the demo's fine-tuning defaults
        patience=None,
        precision="fp32",  # the same numbers on every CPU ("auto" is bf16 only where it is native)
        options={
            "probes": {"tasks": ("pos",)},
            "domains": {"ood_tasks": ("amazon-sentiment",)},
            "heads": {"limit": 32, "step": 0.25, "random_seeds": 1, "mlm_steps": 30},
        },
        device="cpu",
    )
    root = analyze(config, progress=False)
    assert all(s["status"] == "done" for s in read_manifest(root)["stages"].values())
    manifest = read_manifest(root)
    assert manifest["models"]["base"]["family"] == "bert"
    assert (root / "report.html").stat().st_size > 10_000
    tables = sorted(p.name for p in (root / "results").glob("*.csv"))
    if os.environ.get("TUNESCOPE_WRITE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        for name in tables:
            shutil.copy(root / "results" / name, GOLDEN / name)
    assert tables == sorted(p.name for p in GOLDEN.glob("*.csv"))
    if importlib.util.find_spec("spacy") is None:  # the transformers-4 venv: probes fall back, no silver POS
        tables.remove("probes.csv")
    for name in tables:
        got, want = read_csv(root / "results" / name), read_csv(GOLDEN / name)
        assert len(got) == len(want) and (not got or list(got[0]) == list(want[0])), name
        for row, expected in zip(got, want, strict=True):
            for column, value in expected.items():
                if "seconds" not in column and column != "speedup":
                    _assert_cell(row[column], value, f"{name}:{column}")


def _assert_cell(got: str, want: str, where: str) -> None:
    try:
        a, b = float(got), float(want)
    except ValueError:
        assert got == want, where
        return
    # float32 arithmetic: CPUs whose kernels differ (AVX2 / AVX-512) round differently. Measured between
    # two VMs: at most 4e-6 relative (head importance, RSA after fine-tuning) and 6e-8 absolute on a
    # difference of two values near 1 (a change 1 - CKA of 1.5e-4), so the bounds are 2e-5 and 1e-6
    assert a == pytest.approx(b, rel=2e-5, abs=1e-6, nan_ok=True), where


BAD_FIELDS = {
    "model": "no-such/model-folder",
    "tuned": "no-such/tuned-folder",
    "task": "no-such-task",
    "data_dir": "/no/such/glue",
    "split": "no-such-split",
    "limit": 1,
    "pooling": "tokens",
    "batch_size": 0,
    "max_length": 1,
    "device": "tpu",
    "stages": ("no-such-stage",),
    "labels": ("same", "same"),
    "epochs": 0,
    "learning_rate": -1.0,
    "train_limit": 1,
    "experiment_train_limit": 1,
    "patience": 0,
    "precision": "fp16",
    "seeds": (0, 0),
    "n_boot": 99,
    "confidence": 1.0,
    "options": {"no-such-stage": {}},
}

BAD_OPTIONS = {
    "similarity.measures": ("no_such_measure",),
    "similarity.rsa": ("no-such-rdm", "spearman"),
    "truncation.max_loss": -1.0,
    "ffn.layers": (0,),
    "variability.budget": 0,
    "variability.limit": -5,
    "variability.pooling": "tokens",
    "selection.partial_lr_factor": 0.0,
    "selection.partial_epochs_factor": 0,
    "selection.learning_rates": (1e-4, -1e-4),
    "selection.holdout": 1.5,
    "probes.tasks": ("no-such-probe",),
    "probes.conllu": "/no/such/file.conllu",
    "domains.ood_tasks": ("no-such-task",),
    "heads.limit": -1,
    "heads.step": 0.0,
    "heads.rescore": "maybe",
    "heads.random_seeds": -1,
    "heads.max_loss": -1.0,
    "heads.transfer_fraction": 1.0,
    "heads.mlm_steps": 0,
}


@pytest.mark.parametrize("field", list(BAD_FIELDS) + list(BAD_OPTIONS))
def test_every_bad_field_raises_before_anything_is_written(tmp_path, tiny_folder, field):
    options = {"task": "sst2", "data_dir": "/no/such/glue"} if field == "data_dir" else {}
    if field in BAD_OPTIONS:
        stage, name = field.split(".")
        values = {name: BAD_OPTIONS[field]}
        if field == "probes.conllu":
            values["tasks"] = ("upos",)
        options["options"] = {stage: values}
    else:
        options[field] = BAD_FIELDS[field]
    model = options.pop("model", tiny_folder)
    with pytest.raises(InputError):
        analyze(_config(tmp_path, model, **options), progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_fields_cover_every_option():
    from tunescope.options import specs
    from tunescope.stages import discover

    fields = {f.name for f in dataclasses.fields(AnalyzeConfig)}
    assert set(BAD_FIELDS) == fields - {"out", "seed", "finetune"}
    declared = {
        spec.key for name, stage in discover().items() if stage.options for spec in specs(name, stage.options)
    }
    assert set(BAD_OPTIONS) == declared
