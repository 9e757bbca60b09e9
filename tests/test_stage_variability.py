"""Stages ``variability`` and ``selection`` and ``tunescope variability`` on tiny random BERTs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunescope._io import read_csv
from tunescope.cli.main import main
from tunescope.data import get_task
from tunescope.errors import DataError, InputError, UnknownNameError
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
    kwargs.setdefault("epochs", 1)  # the recipes of these tests: one epoch, no early stopping
    kwargs.setdefault("patience", None)
    options = dict(kwargs.pop("options", {}))
    options["variability"] = {"limit": TRAIN_SUBSET, **options.get("variability", {})}
    kwargs["options"] = options
    return AnalyzeConfig(
        out=tmp_path / "run",
        model=model,
        limit=40,
        train_limit=64,
        batch_size=16,
        device="cpu",
        **kwargs,
    )


#: training examples the variability is computed on in these tests (``--variability.limit``)
TRAIN_SUBSET = 120


def _train_examples(config, limit=TRAIN_SUBSET):
    """The training examples the stage should use, drawn by hand: ``limit`` of the train split, seeded."""
    every = get_task(config.task).load("train", data_dir=config.data_dir)
    if limit is None or limit >= len(every):
        return every
    return every.subset(np.sort(np.random.default_rng(config.seed).choice(len(every), limit, replace=False)))


def _reps(folder, config, pooling="mean_no_special"):
    examples = _train_examples(config)
    reps = extract(
        load_encoder(folder),
        examples,
        pooling=pooling,
        batch_size=config.batch_size,
        max_length=config.max_length,
        progress=False,
    )
    return reps, examples.labels


def test_variability_table_matches_reference_and_selection(tmp_path, tiny_folder, tiny_classifier_folder):
    config = _config(
        tmp_path,
        tiny_folder,
        tuned=tiny_classifier_folder,
        stages=("variability",),
        seed=3,
        options={"variability": {"limit": TRAIN_SUBSET}},
    )
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "variability.csv")
    assert list(rows[0]) == ["model", "layer", "split", "variability", "selected"]
    assert {r["split"] for r in rows} == {"train"}
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
        "split": "train",
        "n_examples": str(TRAIN_SUBSET),
        "pooling": "mean_no_special",
        "classifier_layer": str(best),
        "adapt_layers": ",".join(map(str, adapt)),
        "dropped_layers": ",".join(map(str, dropped)),
    }
    assert chosen["reason"].startswith(f"layer {best} has the lowest variability")
    html = (root / "report.html").read_text()
    assert "Hidden-state variability" in html and chosen["reason"] in html
    assert (root / "figures" / "variability.png").exists()


def _folder(row):
    """Where the stage saved an arm (the per-arm recipe; an arm equal to ``top`` shares its folder)."""
    if row["strategy"] == "full":
        return "tuned"
    return f"select-{row['strategy']}-lr{float(row['learning_rate']):g}-ep{row['epochs']}"


def test_selection_experiment_trains_each_arm_with_its_recipe(tmp_path, tiny_folder, small_sst2):
    from tunescope.inference import evaluate
    from tunescope.models import load_classifier
    from tunescope.stages.selection import COLUMNS

    config = _config(
        tmp_path,
        tiny_folder,
        task="sst2",
        data_dir=small_sst2,
        finetune=True,
        n_boot=200,
        stages=("finetune", "variability", "selection"),
    )
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "selection.csv")
    assert tuple(rows[0]) == ("seed", *COLUMNS)
    by = {r["strategy"]: r for r in rows}
    (chosen,) = read_csv(root / "results" / "layer_selection.csv")
    top_chosen = chosen["classifier_layer"] == "3" and chosen["adapt_layers"] == "2,3"
    assert set(by) == {"variability", "top", "full", *(("next_best",) if top_chosen else ())}
    assert by["variability"]["classifier_layer"] == chosen["classifier_layer"]
    assert by["variability"]["trained_layers"] == chosen["adapt_layers"]
    assert by["top"]["trained_layers"] == "2,3" and by["full"]["trained_layers"] == "all"
    # the recipes: partial arms 4x the run's rate for 2x its epochs, full the run's own
    for strategy, row in by.items():
        partial = strategy != "full"
        assert float(row["learning_rate"]) == pytest.approx(config.learning_rate * (4 if partial else 1))
        assert int(row["epochs"]) == config.epochs * (2 if partial else 1)
        assert row["recipe"].startswith("per-arm recipe")
        assert int(row["n_boot"]) == 200
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
        assert float(row["delta_ci_low"]) <= float(row["delta"]) <= float(row["delta_ci_high"])
    # the paired difference of the full arm with itself is exactly 0, and so is top's with itself
    assert [float(by["full"][k]) for k in ("delta", "delta_ci_low", "delta_ci_high")] == [0.0, 0.0, 0.0]
    assert [float(by["top"][k]) for k in ("delta_top", "delta_top_ci_low", "delta_top_ci_high")] == [0.0] * 3
    full_params = int(by["full"]["trainable_params"])
    assert int(by["variability"]["trainable_params"]) < full_params
    assert int(by["top"]["trainable_params"]) < full_params
    examples = get_task("sst2").load("validation", data_dir=small_sst2, limit=config.limit)
    for strategy, row in by.items():  # each value is the saved model's own evaluation
        folder = _folder(by["top"] if strategy == "variability" and top_chosen else row)
        model = load_classifier(str(root / "models" / folder))
        assert float(row["value"]) == pytest.approx(evaluate(model, examples, batch_size=16)["accuracy"])
        value = float(row["value"]) - float(by["full"]["value"])
        assert float(row["delta"]) == pytest.approx(value)
    html = (root / "report.html").read_text()
    assert "chosen by variability" in html and "Tuning the layers variability selects" in html
    assert "Xie et al. (2022) found" in html


def test_top_layer_choice_adds_the_next_best_placement(tmp_path, tiny_folder, small_sst2, monkeypatch):
    import tunescope.stages.variability as stage

    planted = {0: 5.0, 1: 3.0, 2: 2.0, 3: 1.0}  # l* = L = 3; the next-lowest is layer 2

    monkeypatch.setattr(stage, "layer_values", lambda reps, labels: (dict(planted), []))
    config = _config(
        tmp_path,
        tiny_folder,
        task="sst2",
        data_dir=small_sst2,
        finetune=True,
        n_boot=200,
        stages=("variability", "selection"),
    )
    root = analyze(config, progress=False)
    by = {r["strategy"]: r for r in read_csv(root / "results" / "selection.csv")}
    assert set(by) == {"variability", "top", "next_best", "full"}
    assert (by["variability"]["classifier_layer"], by["variability"]["trained_layers"]) == ("3", "2,3")
    assert (by["next_best"]["classifier_layer"], by["next_best"]["trained_layers"]) == ("2", "1,2")
    assert by["variability"]["value"] == by["top"]["value"]  # one model
    assert load_classifier_layers(root / "models" / "select-next_best-lr0.0002-ep2") == 2
    notes = read_manifest(root)["notes"]
    assert any("lowest-variability layer is the top layer" in n and "layer 2" in n for n in notes)
    html = (root / "report.html").read_text()
    assert "the variability choice is the top 2 layers itself" in html and "this run cannot tell" in html
    assert "Placing the budget at the next-lowest-variability layer instead (layers 1,2" in html


def load_classifier_layers(folder):
    from tunescope.models import load_classifier

    return load_classifier(str(folder)).num_layers


def test_learning_rate_grid_is_chosen_on_held_out_training_examples(tmp_path, tiny_folder, small_sst2):
    config = _config(
        tmp_path,
        tiny_folder,
        task="sst2",
        data_dir=small_sst2,
        finetune=True,
        n_boot=200,
        options={"selection": {"learning_rates": "1e-4,1e-3"}, "variability": {"budget": 1}},
        stages=("variability", "selection"),
    )
    root = analyze(config, progress=False, report=False)
    grid = read_csv(root / "results" / "selection_grid.csv")
    by = {r["strategy"]: r for r in read_csv(root / "results" / "selection.csv")}
    assert {r["strategy"] for r in grid} == set(by)
    for strategy, row in by.items():
        tried = [r for r in grid if r["strategy"] == strategy]
        assert sorted(float(r["learning_rate"]) for r in tried) == [1e-4, 1e-3]
        (best,) = [r for r in tried if r["chosen"] == "True"]
        assert float(best["heldout_value"]) == max(float(r["heldout_value"]) for r in tried)
        assert float(row["learning_rate"]) == float(best["learning_rate"])
        assert row["recipe"] == "best of 0.0001,0.001 on 10 held-out training examples"  # 20% of 48
        assert int(best["n_heldout"]) == 10


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


def test_too_few_training_examples_of_a_class_is_refused_before_anything_is_written(tmp_path, tiny_folder):
    lines = [f"a good film number {i}\t1" for i in range(12)] + ["a bad film\t0"]
    data = _glue_dir(tmp_path / "glue", "SST-2", "sentence\tlabel", lines)
    config = _config(tmp_path, tiny_folder, task="sst2", data_dir=data, stages=("variability",))
    with pytest.raises(InputError, match=r"'negative' has 1; .*at least 2 examples of every class"):
        analyze(config, progress=False)
    assert not config.out.exists()


def test_variability_uses_training_examples_not_the_analysis_split(tmp_path, tiny_folder):
    lines = [f"a {'good' if i % 2 else 'bad'} film number {i}\t{i % 2}" for i in range(30)]
    data = _glue_dir(tmp_path / "glue", "SST-2", "sentence\tlabel", lines)
    dev = "sentence\tlabel\n" + "".join(f"good {i}\t1\n" for i in range(4))  # one class: unusable here
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text(dev, encoding="utf-8")
    config = _config(
        tmp_path,
        tiny_folder,
        task="sst2",
        data_dir=data,
        stages=("variability",),
        options={"variability": {"limit": 0}},
    )
    root = analyze(config, progress=False, report=False)
    (chosen,) = read_csv(root / "results" / "layer_selection.csv")
    assert chosen["split"] == "train" and chosen["n_examples"] == "30"  # limit 0 = the whole split
    reps, labels = _reps(tiny_folder, config)
    rows = read_csv(root / "results" / "variability.csv")
    for row in rows:
        reference = variability_reference(reps[int(row["layer"])].double(), labels)
        assert float(row["variability"]) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"limit": 1}, InputError, "--variability.limit"),
        ({"pooling": "tokens"}, UnknownNameError, "mean_no_special"),
        ({"budget": 0}, InputError, "--variability.budget"),
    ],
)
def test_bad_variability_options(tmp_path, options, error, words):
    with pytest.raises(error, match=words):
        AnalyzeConfig(out=tmp_path / "x", options={"variability": options})


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


def _row(strategy, value, trained, params, seconds, classifier_layer=4, delta=(0, 0, 0), delta_top=(0, 0, 0)):
    lr, epochs = ("5e-05", "1") if strategy == "full" else ("0.0002", "2")
    return {
        "strategy": strategy,
        "classifier_layer": str(classifier_layer),
        "trained_layers": trained,
        "learning_rate": lr,
        "epochs": epochs,
        "metric": "accuracy",
        "value": str(value),
        "ci_low": str(value - 0.03),
        "ci_high": str(value + 0.03),
        "delta": str(delta[0]),
        "delta_ci_low": str(delta[1]),
        "delta_ci_high": str(delta[2]),
        "delta_top": str(delta_top[0]),
        "delta_top_ci_low": str(delta_top[1]),
        "delta_top_ci_high": str(delta_top[2]),
        "trainable_params": str(params),
        "total_params": "1000",
        "train_seconds": str(seconds),
    }


def test_selection_sentence_words_come_from_the_intervals():
    from tunescope.stages.selection.section import sentence

    rows = {
        "variability": _row(
            "variability",
            0.79,
            "3,4",
            140,
            45.0,
            delta=(-0.02, -0.035, -0.006),
            delta_top=(0.02, 0.004, 0.037),
        ),
        "top": _row("top", 0.77, "5,6", 150, 50.0, 6),
        "full": _row("full", 0.81, "all", 1000, 100.0, 6),
    }
    assert sentence(rows) == (
        "Tuning only layers 3,4 with the classifier on layer 4 (chosen by variability; lr 0.0002, 2 epochs) "
        "reaches 0.790 accuracy [0.760, 0.820]; against full fine-tuning (lr 5e-05, 1 epoch, 0.810 accuracy "
        "[0.780, 0.840]) it costs 2.0 points [-3.5, -0.6], training 14% of the parameters in 45% of the "
        "time. Against the top 2 layers (lr 0.0002, 2 epochs, 0.770 accuracy [0.740, 0.800]) it gains 2.0 "
        "points [0.4, 3.7]. Xie et al. (2022) found that the layers variability selects match or beat the "
        "top 2 layers with the same budget: this run agrees."
    )
    rows["variability"].update(delta_top="-0.01", delta_top_ci_low="-0.05", delta_top_ci_high="0.03")
    text = sentence(rows)
    assert "it makes no measurable difference (-1.0 points [-5.0, 3.0])" in text
    assert text.endswith("this run cannot tell.")  # the interval reaches 5 points below: no match shown
    rows["variability"].update(delta_top_ci_low="-0.008", delta_top_ci_high="0.01")
    assert sentence(rows).endswith("this run agrees.")  # within 1 point of top-m at worst
    rows["variability"].update(delta_top_ci_low="-0.02", delta_top_ci_high="-0.001")
    assert sentence(rows).endswith("this run disagrees.")


def test_selection_sentence_when_the_choice_is_the_top_layers():
    from tunescope.stages.selection.section import sentence

    rows = {
        "variability": _row("variability", 0.77, "5,6", 150, 50.0, 6),
        "top": _row("top", 0.77, "5,6", 150, 50.0, 6),
        "next_best": _row("next_best", 0.75, "3,4", 140, 45.0, 4, delta_top=(-0.02, -0.04, 0.001)),
        "full": _row("full", 0.81, "all", 1000, 100.0, 6),
    }
    text = sentence(rows)
    assert "the variability choice is the top 2 layers itself (one model)" in text
    assert "this run cannot tell from this choice" in text
    assert text.endswith(
        "Placing the budget at the next-lowest-variability layer instead (layers 3,4, classifier on layer 4; "
        "0.750 accuracy [0.720, 0.780]) makes no measurable difference (-2.0 points [-4.0, 0.1]) against the "
        "top 2 layers."
    )


def test_docs_example_runs(tmp_path, capsys):
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "variability.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code.replace("/tmp/tunescope-doc", str(tmp_path)), "docs/variability.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["4", "True"]
