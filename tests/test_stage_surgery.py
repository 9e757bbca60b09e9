"""Stages ``ablation`` and ``ffn``: their tables are the library's own numbers, recomputed here directly."""

from __future__ import annotations

import pytest
import torch

from tunescope._io import read_csv
from tunescope.data import get_task
from tunescope.errors import InputError, UnsupportedArchitectureError
from tunescope.inference import evaluate, max_length_for
from tunescope.models import load_classifier, load_encoder
from tunescope.pipeline import AnalyzeConfig, RunContext, analyze, read_manifest
from tunescope.similarity import linear_cka
from tunescope.stages.ffn import COLUMNS as FFN_COLUMNS
from tunescope.surgery import count_parameters, reinit_layers, removed_ffn_layers, restore_layers
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

LIMIT = 40


def _save(encoder, folder, seed):
    """Save ``encoder`` with its layer matrices redrawn at std 0.2 (transformers' 0.02 gives a tiny model
    that predicts one class for every text and FFNs that hardly change anything: weak tests)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.model.named_parameters():
            if param.ndim == 2 and "embeddings" not in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return save_model(encoder, folder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random 3-layer BERT saved as an HF folder, as a user's pre-trained model would be."""
    return _save(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-bert"), seed=0)


@pytest.fixture(scope="module")
def given_tuned(tmp_path_factory):
    """A tiny 3-layer BERT classifier standing in for a model fine-tuned elsewhere (``--tuned``)."""
    encoder = tiny_model("bert", task="classifier", num_layers=3, seed=2)
    return _save(encoder, tmp_path_factory.mktemp("tiny-bert-tuned"), seed=1)


def _config(out, model, **kwargs):
    return AnalyzeConfig(
        out=out, model=model, limit=LIMIT, train_limit=64, batch_size=16, device="cpu", **kwargs
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_folder):
    """One run of finetune + ablation + ffn (default FFN choice), with its report."""
    out = tmp_path_factory.mktemp("run") / "run"
    config = _config(out, tiny_folder, stages=("finetune", "ablation", "ffn"))
    return analyze(config, progress=False), config


@pytest.fixture(scope="module")
def examples():
    return get_task("movie-sentiment").load("validation", limit=LIMIT)


def _accuracy(model, examples):
    return evaluate(model, examples, batch_size=16)["accuracy"]


def test_ablation_rows_are_the_surgery_functions_evaluated(tmp_path, tiny_folder, given_tuned, examples):
    from tunescope.stages import ablation

    ctx = RunContext(_config(tmp_path / "run", tiny_folder, tuned=given_tuned), progress=False)
    tuned, base = ctx.classifier(), ctx.encoder("base")
    before = (tuned.fingerprint, base.fingerprint)
    (table,) = ablation.run(ctx)
    assert (tuned.fingerprint, base.fingerprint) == before  # ablated models are copies
    rows = table.rows
    assert [(r["ablation"], r["layers"]) for r in rows] == [
        ("none", ""),
        ("restore", "1"),
        ("restore", "2"),
        ("restore", "3"),
        ("reinit", "1"),
        ("reinit", "2"),
        ("reinit", "3"),
        ("restore_top", "3"),
        ("restore_top", "2,3"),
        ("restore_top", "1-3"),
    ]
    tuned, base = load_classifier(given_tuned), load_encoder(tiny_folder)  # loaded afresh
    expected = {("none", ""): _accuracy(tuned, examples)}
    for layer in (1, 2, 3):
        expected["restore", str(layer)] = _accuracy(restore_layers(tuned, base, [layer]), examples)
        expected["reinit", str(layer)] = _accuracy(reinit_layers(tuned, [layer], seed=0), examples)
    expected["restore_top", "3"] = expected["restore", "3"]
    expected["restore_top", "2,3"] = _accuracy(restore_layers(tuned, base, [2, 3]), examples)
    expected["restore_top", "1-3"] = _accuracy(restore_layers(tuned, base, [1, 2, 3]), examples)
    reference = expected["none", ""]
    for row in rows:
        value = expected[row["ablation"], row["layers"]]
        assert row["metric"] == "accuracy"
        assert row["value"] == pytest.approx(value)
        assert row["delta"] == pytest.approx(value - reference)
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n_boot"] == ctx.config.n_boot
    assert len({r["value"] for r in rows}) > 1  # the ablations do change the predictions
    # the intervals resample the models' predictions: recomputed here from the predictions themselves
    from tunescope.inference import predictions

    boot = {"n_boot": ctx.config.n_boot, "level": ctx.config.confidence, "seed": ctx.config.seed}
    as_is = predictions(tuned, examples)
    restored = predictions(restore_layers(tuned, base, [2, 3]), examples)
    row = next(r for r in rows if (r["ablation"], r["layers"]) == ("restore_top", "2,3"))
    ci, delta = restored.interval("accuracy", **boot), as_is.difference(restored, "accuracy", **boot)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((delta.low, delta.high))
    assert (rows[0]["delta_ci_low"], rows[0]["delta_ci_high"]) == (0.0, 0.0)


def _ffn_io_by_hand(folder, examples):
    """Per layer: (attention block output, layer output) over non-padding tokens, without the adapter."""
    encoder = load_encoder(folder)
    model, tokenizer = encoder.model, encoder.tokenizer
    attention = {}
    hooks = [
        layer.attention.register_forward_hook(lambda m, a, out, i=i: attention.__setitem__(i, out[0]))
        for i, layer in enumerate(model.encoder.layer, start=1)
    ]
    batch = tokenizer(
        examples.texts,
        truncation=True,
        max_length=max_length_for(tokenizer, model.config, 128),
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    mask = batch["attention_mask"].bool()
    return {i: (attention[i][mask], hidden[i][mask]) for i in attention}


def test_ffn_cka_and_default_choice(run, tiny_folder, examples):
    root, _ = run
    rows = read_csv(root / "results" / "ffn_cka.csv")
    assert list(rows[0]) == ["seed", "layer", "cka", "chosen"]
    by_hand = _ffn_io_by_hand(tiny_folder, examples)
    cka = {int(r["layer"]): float(r["cka"]) for r in rows}
    assert sorted(cka) == [1, 2, 3]
    for layer, (x, y) in by_hand.items():
        assert cka[layer] == pytest.approx(float(linear_cka(x, y)), rel=1e-4)
    best = max(cka, key=cka.__getitem__)  # L // 3 = 1 layer: the argmax
    assert [int(r["layer"]) for r in rows if r["chosen"] == "True"] == [best]


def test_ffn_removed_model_is_trained_saved_and_evaluated(run, examples):
    root, _ = run
    best = next(int(r["layer"]) for r in read_csv(root / "results" / "ffn_cka.csv") if r["chosen"] == "True")
    rows = read_csv(root / "results" / "ffn.csv")
    assert tuple(rows[0]) == ("seed", *FFN_COLUMNS)  # intervals: tests/test_stage_ffn.py
    full, removed = rows
    assert (full["model"], full["ffn_removed_layers"]) == ("full", "")
    assert (removed["model"], removed["ffn_removed_layers"]) == ("ffn_removed", str(best))
    tuned = load_classifier(str(root / "models" / "tuned"))
    slim = load_classifier(str(root / "models" / "ffn-removed"))
    assert removed_ffn_layers(slim) == [best]
    with pytest.raises(UnsupportedArchitectureError, match="FFN up projection"):
        slim.adapter.ffn(slim.model, best)  # the stand-ins are no FFN
    assert float(full["value"]) == pytest.approx(_accuracy(tuned, examples))
    assert float(removed["value"]) == pytest.approx(_accuracy(slim, examples))
    assert int(full["params"]) == count_parameters(tuned)
    assert int(removed["params"]) == count_parameters(slim) == count_parameters(tuned) - 2501  # one FFN
    assert int(removed["trainable_params"]) == int(removed["params"])
    assert float(full["train_seconds"]) > 0 and float(removed["train_seconds"]) > 0


def test_tables_and_report_of_a_full_run(run):
    root, _ = run
    rows = read_csv(root / "results" / "ablation.csv")
    from tunescope.stages.ablation import COLUMNS

    assert tuple(rows[0]) == ("seed", *COLUMNS)
    assert len(rows) == 1 + 3 + 3 + 3
    html = (root / "report.html").read_text()
    assert '<section id="ablation">' in html and '<section id="ffn">' in html
    assert "Which layers&#39; fine-tuning matters" in html or "Which layers' fine-tuning matters" in html
    assert "Removing the FFN of layer" in html and "restore_top" in html
    assert (root / "figures" / "ablation.png").exists() and (root / "figures" / "ffn_cka.png").exists()


def test_explicit_ffn_layers_with_a_given_tuned_model(tmp_path, tiny_folder, given_tuned, examples):
    config = _config(
        tmp_path / "run",
        tiny_folder,
        tuned=given_tuned,
        options={"ffn": {"layers": (3, 1)}},
        stages=("ffn",),
    )
    root = analyze(config, progress=False, report=False)
    chosen = [int(r["layer"]) for r in read_csv(root / "results" / "ffn_cka.csv") if r["chosen"] == "True"]
    assert chosen == [1, 3]
    full, removed = read_csv(root / "results" / "ffn.csv")
    assert removed["ffn_removed_layers"] == "1,3"
    # with --tuned, an unmodified baseline is fine-tuned here, the same way as the FFN-removed model
    assert not (root / "models" / "tuned").exists()
    baseline = load_classifier(str(root / "models" / "full"))
    assert float(full["value"]) == pytest.approx(_accuracy(baseline, examples))
    assert removed_ffn_layers(load_classifier(str(root / "models" / "ffn-removed"))) == [1, 3]
    assert int(full["params"]) - int(removed["params"]) == 2 * 2501


def test_out_of_range_ffn_layers_fail_before_training(tmp_path, tiny_folder):
    with pytest.raises(InputError, match="--ffn.layers"):  # below 1: the config refuses it at once
        _config(tmp_path / "run", tiny_folder, options={"ffn": {"layers": (0, 2)}})
    # above L: only the model can tell; the stage checks before it measures or trains anything
    config = _config(tmp_path / "run", tiny_folder, options={"ffn": {"layers": (2, 4)}}, stages=("ffn",))
    with pytest.raises(InputError, match=r"--ffn.layers 4 out of range.*1\.\.3"):
        analyze(config, progress=False, report=False)
    assert not (tmp_path / "run" / "models").exists()


def test_without_fine_tuning_both_stages_leave_notes(tmp_path, tiny_folder):
    config = _config(tmp_path / "run", tiny_folder, finetune=False, stages=("ablation", "ffn"))
    root = analyze(config, progress=False)
    assert not (root / "results" / "ablation.csv").exists()
    assert not (root / "results" / "ffn.csv").exists()
    assert len(read_csv(root / "results" / "ffn_cka.csv")) == 3  # measured, not trained
    notes = read_manifest(root)["notes"]
    assert any(n.startswith("ablation: no fine-tuned model") for n in notes)
    assert any(n.startswith("ffn: fine-tuning is off") for n in notes)
    assert not (root / "models").exists()
    assert "changes the token representations least" in (root / "report.html").read_text()
