"""Stages ``variability`` and ``selection`` and ``tunescope variability`` on tiny random BERTs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunescope._io import read_csv
from tunescope.cli.main import main
from tunescope.data import get_task
from tunescope.errors import DataError
from tunescope.extract import Representations, extract
from tunescope.models import load_encoder
from tunescope.pipeline import AnalyzeConfig, RunContext, analyze, read_manifest
from tunescope.stages.variability import layer_values
from tunescope.testing.reference_probing import variability_reference
from tunescope.testing.tiny import save_model, tiny_model
from tunescope.variability import layer_variability

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random 3-layer BERT saved as an HF folder, as a user's model would be."""
    return save_model(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_classifier_folder(tmp_path_factory):
    """A tiny 2-label classifier standing in for a model fine-tuned elsewhere (``--tuned``)."""
    encoder = tiny_model("bert", task="classifier", num_labels=2, num_layers=3, seed=1)
    return save_model(encoder, tmp_path_factory.mktemp("tiny-bert-classifier"))


@pytest.fixture(scope="module")
def small_sst2(tmp_path_factory):
    """A local SST-2 folder of 48 short two-class sentences, so fine-tuning validates on few examples."""
    words = {0: ("bad", "awful", "dull", "poor"), 1: ("good", "great", "fine", "nice")}
    lines = [f"a {words[i % 2][i % 4]} film number {i}\t{i % 2}" for i in range(48)]
    return _glue_dir(tmp_path_factory.mktemp("glue"), "SST-2", "sentence\tlabel", lines)


def _config(tmp_path, model, **kwargs):
    kwargs.setdefault("finetune", False)
    return AnalyzeConfig(
        out=tmp_path / "run",
        model=model,
        limit=40,
        train_limit=64,
        batch_size=16,
        device="cpu",
        **kwargs,
    )


def _reps(folder, config):
    examples = get_task(config.task).load(config.split, limit=config.limit)
    reps = extract(
        load_encoder(folder),
        examples,
        pooling=config.pooling,
        batch_size=config.batch_size,
        max_length=config.max_length,
        progress=False,
    )
    return reps, examples.labels


def test_variability_table_matches_reference_and_selection(tmp_path, tiny_folder, tiny_classifier_folder):
    config = _config(tmp_path, tiny_folder, tuned=tiny_classifier_folder, stages=("variability",))
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "variability.csv")
    assert list(rows[0]) == ["model", "layer", "variability", "selected"]
    assert {(r["model"], int(r["layer"])) for r in rows} == {
        (m, k) for m in ("base", "tuned") for k in range(4)
    }
    reference = {}
    for model, folder in (("base", tiny_folder), ("tuned", tiny_classifier_folder)):
        reps, labels = _reps(folder, config)
        library = layer_variability(reps, labels)
        table = {int(r["layer"]): float(r["variability"]) for r in rows if r["model"] == model}
        for layer, value in table.items():
            assert value == pytest.approx(library[layer], rel=1e-12)
            assert value == pytest.approx(variability_reference(reps[layer].double(), labels), rel=1e-6)
        if model == "base":
            reference = {layer: variability_reference(reps[layer].double(), labels) for layer in reps.layers}
    # Xie et al.'s rule, written out here: the classifier on the transformer layer (1..L) of lowest
    # variability, the budget's layers ending there tuned, the layers above it dropped
    budget = 2
    best = min((layer for layer in reference if layer >= 1), key=lambda layer: reference[layer])
    adapt = list(range(max(1, best - budget + 1), best + 1))
    dropped = [layer for layer in reference if layer > best]
    expected = {best: "classifier", **{layer: "adapt" for layer in adapt if layer != best}}
    expected.update({layer: "dropped" for layer in dropped})
    assert {int(r["layer"]): r["selected"] for r in rows if r["model"] == "base"} == {
        layer: expected.get(layer, "") for layer in range(4)
    }
    assert {r["selected"] for r in rows if r["model"] == "tuned"} == {""}
    (chosen,) = read_csv(root / "results" / "layer_selection.csv")
    assert {k: v for k, v in chosen.items() if k != "reason"} == {
        "budget": "2",
        "classifier_layer": str(best),
        "adapt_layers": ",".join(map(str, adapt)),
        "dropped_layers": ",".join(map(str, dropped)),
    }
    assert chosen["reason"].startswith(f"layer {best} has the lowest variability")
    html = (root / "report.html").read_text()
    assert "Hidden-state variability" in html and chosen["reason"] in html
    assert (root / "figures" / "variability.png").exists()


def test_selection_experiment_trains_three_strategies(tmp_path, tiny_folder, small_sst2):
    from tunescope.inference import evaluate
    from tunescope.models import load_classifier

    config = _config(
        tmp_path,
        tiny_folder,
        task="sst2",
        data_dir=small_sst2,
        finetune=True,
        stages=("finetune", "variability", "selection"),
    )
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "selection.csv")
    assert list(rows[0]) == [
        "strategy",
        "classifier_layer",
        "trained_layers",
        "metric",
        "value",
        "trainable_params",
        "total_params",
        "train_seconds",
    ]
    by = {r["strategy"]: r for r in rows}
    assert set(by) == {"variability", "top", "full"}
    (chosen,) = read_csv(root / "results" / "layer_selection.csv")
    assert by["variability"]["classifier_layer"] == chosen["classifier_layer"]
    assert by["variability"]["trained_layers"] == chosen["adapt_layers"]
    assert by["top"]["trained_layers"] == "2,3" and by["full"]["trained_layers"] == "all"
    full_params = int(by["full"]["trainable_params"])
    assert int(by["variability"]["trainable_params"]) < full_params
    assert int(by["top"]["trainable_params"]) < full_params
    examples = get_task("sst2").load("validation", data_dir=small_sst2, limit=config.limit)
    folders = {"variability": "select-variability", "top": "select-top", "full": "tuned"}
    for strategy, folder in folders.items():  # each value is the saved model's own evaluation
        model = load_classifier(str(root / "models" / folder))
        assert float(by[strategy]["value"]) == pytest.approx(
            evaluate(model, examples, batch_size=16)["accuracy"]
        )
    assert load_classifier(str(root / "models" / "select-variability")).num_layers == int(
        chosen["classifier_layer"]
    )
    html = (root / "report.html").read_text()
    assert "chosen by variability" in html and "Tuning the layers variability selects" in html


def test_selection_with_given_tuned_model_trains_its_own_full_model(
    tmp_path, tiny_folder, tiny_classifier_folder, small_sst2
):
    config = _config(
        tmp_path,
        tiny_folder,
        task="sst2",
        data_dir=small_sst2,
        tuned=tiny_classifier_folder,
        finetune=True,
        options={"variability": {"budget": 1}},
        stages=("variability", "selection"),
    )
    root = analyze(config, progress=False, report=False)
    by = {r["strategy"]: r for r in read_csv(root / "results" / "selection.csv")}
    assert (root / "models" / "full").is_dir() and not (root / "models" / "tuned").exists()
    assert by["top"]["trained_layers"] == "3"
    assert len(by["variability"]["trained_layers"].split(",")) == 1


def test_selection_without_finetuning_is_a_note(tmp_path, tiny_folder):
    root = analyze(_config(tmp_path, tiny_folder, stages=("variability", "selection")), progress=False)
    assert (root / "results" / "variability.csv").exists()
    assert not (root / "results" / "selection.csv").exists()
    assert any("selection" in note and "--no-finetune" in note for note in read_manifest(root)["notes"])


def _glue_dir(tmp_path, folder, header, lines):
    (tmp_path / folder).mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / folder / f"{split}.tsv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return str(tmp_path)


def test_regression_task_is_a_note(tmp_path, tiny_folder):
    lines = [f"a good film {i}\tthe film was fine\t{i % 5}.0" for i in range(12)]
    data = _glue_dir(tmp_path / "glue", "STS-B", "sentence1\tsentence2\tscore", lines)
    config = _config(
        tmp_path, tiny_folder, task="stsb", data_dir=data, finetune=True, stages=("variability", "selection")
    )
    root = analyze(config, progress=False)
    assert not list((root / "results").glob("*.csv"))
    notes = read_manifest(root)["notes"]
    assert any("regression" in note for note in notes)
    assert any("chose no layers" in note for note in notes)


def test_single_class_is_refused_before_anything_is_written(tmp_path, tiny_folder):
    lines = [f"a good film number {i}\t1" for i in range(12)]
    data = _glue_dir(tmp_path / "glue", "SST-2", "sentence\tlabel", lines)
    config = _config(tmp_path, tiny_folder, task="sst2", data_dir=data, stages=("variability",))
    with pytest.raises(DataError, match="only the class 'positive'.*at least two classes"):
        analyze(config, progress=False)
    assert not config.out.exists()


def test_degenerate_layer_is_nan_with_a_note(tmp_path, tiny_folder, monkeypatch):
    original = RunContext.representations

    def with_constant_layer(self, which=None, *args, **kwargs):
        reps = original(self, which, *args, **kwargs)
        tensors = dict(reps.tensors)
        tensors[1] = torch.ones_like(tensors[1])  # identical class means: zero between-class scatter
        return Representations(tensors, reps.pooling, reps.labels)

    monkeypatch.setattr(RunContext, "representations", with_constant_layer)
    root = analyze(_config(tmp_path, tiny_folder, stages=("variability",)), progress=False)
    rows = {int(r["layer"]): r for r in read_csv(root / "results" / "variability.csv")}
    assert math.isnan(float(rows[1]["variability"])) and rows[1]["selected"] != "classifier"
    assert all(math.isfinite(float(rows[k]["variability"])) for k in (0, 2, 3))
    assert any("zero between-class scatter" in note for note in read_manifest(root)["notes"])
    assert "Undefined (identical class means): base layer 1" in (root / "report.html").read_text()


def test_layer_values_by_hand():
    y = np.array([0, 0, 1, 1])
    reps = {1: torch.tensor([[0.0], [2.0], [4.0], [6.0]]), 2: torch.ones(4, 2)}
    values, degenerate = layer_values(reps, y)
    assert values[1] == pytest.approx(0.125) and math.isnan(values[2]) and degenerate == [2]
    assert layer_values({1: reps[1]}, y) == ({1: pytest.approx(0.125)}, [])


def test_cli_variability_writes_tables(tmp_path, tiny_folder, capsys):
    out = tmp_path / "var"
    args = ["variability", tiny_folder, "--task", "movie-sentiment", "--out", str(out)]
    code = main([*args, "--limit", "40", "--budget", "1", "--device", "cpu", "--seed", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = read_csv(out / "results" / "variability.csv")
    assert {r["model"] for r in rows} == {"base"} and len(rows) == 4
    (chosen,) = read_csv(out / "results" / "layer_selection.csv")
    assert chosen["budget"] == "1" and chosen["reason"] in captured.out
    assert "variability" in captured.out.splitlines()[0]
    assert read_manifest(out)["config"]["finetune"] is False


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--budget", "0"], "--budget"), (["--task", "no-such-task"], "no-such-task")],
)
def test_cli_variability_errors(tmp_path, tiny_folder, capsys, extra, words):
    code = main(["variability", tiny_folder, "--out", str(tmp_path / "x"), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert words in err


def _row(strategy, value, trained, params, seconds, classifier_layer=4):
    return {
        "strategy": strategy,
        "classifier_layer": str(classifier_layer),
        "trained_layers": trained,
        "metric": "accuracy",
        "value": str(value),
        "trainable_params": str(params),
        "total_params": "1000",
        "train_seconds": str(seconds),
    }


def test_selection_sentence_orders_by_the_numbers():
    from tunescope.stages.selection.section import sentence

    rows = {
        "variability": _row("variability", 0.79, "3,4", 140, 45.0),
        "top": _row("top", 0.77, "5,6", 150, 50.0, 6),
        "full": _row("full", 0.81, "all", 1000, 100.0, 6),
    }
    assert sentence(rows) == (
        "Tuning only layers 3,4 with the classifier on layer 4 (chosen by variability) reaches 0.790 "
        "accuracy: above the top 2 layers (0.770) and below full fine-tuning (0.810), training 14% of the "
        "parameters in 45% of the time. Best accuracy: full fine-tuning (0.810)."
    )
    rows["top"]["value"], rows["full"]["value"] = "0.8", "0.79"
    text = sentence(rows)
    assert "below the top 2 layers (0.800) and level with full fine-tuning (0.790)" in text
    assert text.endswith("Best accuracy: the top 2 layers (0.800).")


def test_docs_example_runs(tmp_path, capsys):
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "variability.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code.replace("/tmp/tunescope-doc", str(tmp_path)), "docs/variability.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["4", "True"]
