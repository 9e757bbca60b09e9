"""``tunescope heads`` and ``tunescope compress --prune-heads`` end to end on tiny models."""

from __future__ import annotations

import pytest
import torch

from tunescope import heads as heads_lib
from tunescope._io import read_csv
from tunescope.cli.heads import HEADS_COLUMNS
from tunescope.cli.main import main
from tunescope.data import get_task
from tunescope.models import load_classifier, load_encoder, mask_heads
from tunescope.models.head_pruning import pruned_heads
from tunescope.surgery import count_parameters, prune_heads, remove_ffn, truncate
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

LIMIT = 16
TEXTS = ["a good film", "the story was boring and the acting was even worse", "I loved it!"]
FAST = ["--task", "movie-sentiment", "--limit", str(LIMIT), "--device", "cpu", "--batch-size", "8"]
SAME = {"batch_size": 8, "max_length": 128, "progress": False}  # what the CLI passes with FAST


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 3-layer classifier saved as BertForSequenceClassification: its head counts as trained."""
    model = tiny_model("bert", task="classifier", num_labels=2, num_layers=3, seed=2)
    return save_model(model, tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_model(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="module")
def examples():
    return get_task("movie-sentiment").load("validation", limit=LIMIT)


def _ok(capsys, code):
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _logits(model):
    inputs = tiny_model("bert").tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _column(rows, name, n_layers=3, n_heads=4):
    values = [float(r[name]) for r in rows]
    return torch.tensor(values, dtype=torch.float64).reshape(n_layers, n_heads)


# ------------------------------------------------------------------------------------------------
# tunescope heads
# ------------------------------------------------------------------------------------------------
def test_heads_csv_is_head_importance_of_the_trained_classifier(tmp_path, tuned, examples, capsys):
    out = tmp_path / "h"
    printed = _ok(capsys, main(["heads", tuned, *FAST, "--out", str(out)]))
    rows = read_csv(out / "heads.csv")
    assert tuple(rows[0]) == HEADS_COLUMNS
    assert len(rows) == 3 * 4
    places = [(layer, head) for layer in (1, 2, 3) for head in range(4)]
    assert [(int(r["layer"]), int(r["head"])) for r in rows] == places
    assert [r["location"] for r in rows][:2] == ["layer.1.head.0", "layer.1.head.1"]
    assert {r["objective"] for r in rows} == {"task"}  # the default for a trained classifier
    raw = heads_lib.head_importance(load_classifier(tuned), examples, "task", normalize=False, **SAME)
    torch.testing.assert_close(_column(rows, "importance"), raw, rtol=1e-12, atol=0)
    normalized = _column(rows, "normalized")
    torch.testing.assert_close(normalized, heads_lib.normalize_by_layer(raw), rtol=1e-12, atol=0)
    for layer in range(3):
        assert f"layer.{layer + 1}.head.{int(normalized[layer].argmax())} " in printed
        assert f"layer.{layer + 1}.head.{int(normalized[layer].argmin())} " in printed
    assert "heads.csv" in printed and not (out / "pruning.csv").exists()


def test_prune_curve_rows_are_prune_curve(tmp_path, tuned, examples, capsys):
    out = tmp_path / "h"
    printed = _ok(capsys, main(["heads", tuned, *FAST, "--prune-curve", "--step", "0.25", "--out", str(out)]))
    rows = read_csv(out / "pruning.csv")
    assert tuple(rows[0]) == heads_lib.PRUNING_COLUMNS
    expected = heads_lib.prune_curve(
        load_classifier(tuned), examples, rank_by="task", objective="task", step=0.25, **SAME
    )
    assert [int(r["heads_pruned"]) for r in rows] == [0, 3, 6, 9] == [r["heads_pruned"] for r in expected]
    assert [r["pruned"] for r in rows] == [r["pruned"] for r in expected]
    assert [float(r["value"]) for r in rows] == [r["value"] for r in expected]
    assert {r["objective"] for r in rows} == {"task"} and {r["metric"] for r in rows} == {"accuracy"}
    assert "pruning curve" in printed and "pruning.csv" in printed


def test_base_model_defaults_to_kl_and_ranks_at_random_on_request(tmp_path, base, examples, capsys):
    out = tmp_path / "h"
    args = ["heads", base, *FAST, "--prune-curve", "--rank-by", "random", "--step", "0.5", "--seed", "3"]
    _ok(capsys, main([*args, "--out", str(out)]))
    rows = read_csv(out / "heads.csv")
    assert {r["objective"] for r in rows} == {"kl (hidden state)"}
    raw = heads_lib.head_importance(load_encoder(base), examples, "kl", normalize=False, seed=3, **SAME)
    torch.testing.assert_close(_column(rows, "importance"), raw, rtol=1e-12, atol=0)
    curve = read_csv(out / "pruning.csv")
    assert {(r["rank_by"], r["objective"], r["metric"]) for r in curve} == {
        ("random", "kl (hidden state)", "hidden_mse")
    }
    assert [int(r["heads_pruned"]) for r in curve] == [0, 6, 9]
    assert float(curve[0]["value"]) == 0.0 < float(curve[-1]["value"])


def test_prune_exports_the_masked_model_smaller(tmp_path, tuned, capsys):
    out, small = tmp_path / "h", tmp_path / "small"
    args = ["heads", tuned, *FAST, "--prune", "0.5", "--export", str(small), "--out", str(out)]
    printed = _ok(capsys, main(args))
    chosen = heads_lib.least_important(_column(read_csv(out / "heads.csv"), "normalized"), 0.5)
    assert sum(len(h) for h in chosen.values()) == 6
    model, reloaded = load_classifier(tuned), load_classifier(small)
    assert pruned_heads(reloaded) == chosen
    expected = count_parameters(prune_heads(model, chosen))
    assert count_parameters(reloaded) == expected < count_parameters(model)
    with mask_heads(model, [(layer, h) for layer, hs in chosen.items() for h in hs]):
        masked = _logits(model.model)
    torch.testing.assert_close(_logits(reloaded.model), masked, rtol=1e-5, atol=1e-5)
    assert f"parameters: {count_parameters(model):,} -> {count_parameters(reloaded):,}" in printed
    assert f"accuracy on movie-sentiment validation ({LIMIT} examples)" in printed


# ------------------------------------------------------------------------------------------------
# tunescope compress --prune-heads
# ------------------------------------------------------------------------------------------------
def test_compress_prunes_named_heads_of_the_remaining_layers(tmp_path, tuned, capsys):
    out = tmp_path / "small"
    args = ["compress", tuned, "--drop-top", "1", "--prune-heads", "layer.1.head.0,layer.2.head.3"]
    printed = _ok(capsys, main([*args, "--device", "cpu", "--out", str(out)]))
    reloaded = load_classifier(out)
    expected = prune_heads(truncate(load_classifier(tuned), 2), ["layer.1.head.0", "layer.2.head.3"])
    assert reloaded.num_layers == 2 and pruned_heads(reloaded) == {1: [0], 2: [3]}
    assert count_parameters(reloaded) == count_parameters(expected)
    torch.testing.assert_close(_logits(reloaded.model), _logits(expected.model), rtol=1e-5, atol=1e-6)
    assert "heads removed: layer.1.head.0, layer.2.head.3" in printed


def test_compress_prunes_a_fraction_by_task_importance(tmp_path, tuned, examples, capsys):
    out = tmp_path / "small"
    args = ["compress", tuned, "--remove-ffn", "1", "--prune-heads", "0.25", *FAST, "--out", str(out)]
    printed = _ok(capsys, main(args))
    cut = remove_ffn(load_classifier(tuned), [1])  # heads are scored on the model after the other steps
    chosen = heads_lib.least_important(heads_lib.head_importance(cut, examples, "task", **SAME), 0.25)
    reloaded = load_classifier(out)
    assert pruned_heads(reloaded) == chosen and sum(len(h) for h in chosen.values()) == 3
    expected = prune_heads(cut, chosen)
    torch.testing.assert_close(_logits(reloaded.model), _logits(expected.model), rtol=1e-5, atol=1e-6)
    assert f"-> {count_parameters(expected):,}" in printed and "accuracy on movie-sentiment" in printed


# ------------------------------------------------------------------------------------------------
# bad input, and what a failure leaves behind
# ------------------------------------------------------------------------------------------------
T = ["--task", "movie-sentiment", "--device", "cpu"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["heads", "TUNED", *T, "--objective", "nope", "--out", "DIR"], "choose one of: kl, mlm, task"),
        (["heads", "TUNED", *T, "--prune-curve", "--rank-by", "nope", "--out", "DIR"], "random"),
        (["heads", "TUNED", *T, "--prune-curve", "--step", "1", "--out", "DIR"], "must be in (0, 1)"),
        (["heads", "TUNED", *T, "--prune-curve", "--step", "0", "--out", "DIR"], "--step 0.0"),
        (["heads", "TUNED", *T, "--step", "0.2", "--out", "DIR"], "add --prune-curve"),
        (["heads", "TUNED", *T, "--prune", "1", "--export", "EXP", "--out", "DIR"], "[0, 1)"),
        (["heads", "TUNED", *T, "--prune", "-0.1", "--export", "EXP", "--out", "DIR"], "[0, 1)"),
        (["heads", "TUNED", *T, "--prune", "0.01", "--export", "EXP", "--out", "DIR"], "removes none"),
        (["heads", "TUNED", *T, "--prune", "0.9", "--export", "EXP", "--out", "DIR"], "at most 9"),
        (["heads", "TUNED", *T, "--prune", "0.3", "--out", "DIR"], "go together"),
        (["heads", "TUNED", *T, "--export", "EXP", "--out", "DIR"], "go together"),
        (["heads", "TUNED", *T, "--prune", "0.3", "--export", "FULL", "--out", "DIR"], "--export"),
        (["heads", "TUNED", *T, "--prune", "0.3", "--export", "DIR", "--out", "DIR"], "is the --out folder"),
        (["heads", "BASE", *T, "--objective", "task", "--out", "DIR"], "as BertModel without"),
        (["heads", "BASE", *T, "--prune-curve", "--rank-by", "task", "--out", "DIR"], "--rank-by task"),
        (["heads", "BASE", *T, "--objective", "mlm", "--no-fit-mlm-head", "--out", "DIR"], "masked-LM head"),
        (
            ["heads", "TUNED", "--task", "sst2", "--data-dir", "GLUE", "--split", "test", "--out", "DIR"],
            "needs labels",
        ),
        (["heads", "TUNED", "--task", "bbc-topic", "--device", "cpu", "--out", "DIR"], "5 labels"),
        (["heads", "TUNED", *T, "--out", "FULL"], "is not empty"),
        (["heads", "TUNED", "--out", "DIR"], "needs --task"),
        (["heads", "TUNED", *T], "--out DIR is required"),
        (["compress", "TUNED", "--prune-heads", "0.3", "--out", "DIR"], "add --task"),
        (["compress", "TUNED", "--prune-heads", "1.5", "--out", "DIR"], "[0, 1)"),
        (["compress", "TUNED", "--prune-heads", "0.01", *T, "--out", "DIR"], "removes none"),
        (["compress", "TUNED", "--prune-heads", "head.1", "--out", "DIR"], "not a head location"),
        (["compress", "TUNED", "--prune-heads", "layer.1.head.9", "--out", "DIR"], "out of range"),
        (
            ["compress", "TUNED", "--drop-top", "1", "--prune-heads", "layer.3.head.0", "--out", "DIR"],
            "layer 3 is dropped by --drop-top 1",
        ),
        (
            [
                "compress",
                "TUNED",
                "--prune-heads",
                ",".join(f"layer.2.head.{h}" for h in range(4)),
                "--out",
                "DIR",
            ],
            "all 4 heads of layer 2",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tuned, base, capsys, args, words):
    out, export, full, glue = tmp_path / "out", tmp_path / "exp", tmp_path / "full", tmp_path / "glue"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "test.tsv").write_text("index\tsentence\n0\ta good film\n1\ta bad film\n")
    places = {
        "TUNED": tuned,
        "BASE": base,
        "DIR": str(out),
        "EXP": str(export),
        "FULL": str(full),
        "GLUE": str(glue),
    }
    code = main([places.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert words in err, err
    assert not out.exists() and not export.exists()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_a_failed_write_leaves_no_table_and_no_folder(tmp_path, tuned, capsys, monkeypatch):
    import tunescope._io

    written = []
    real = tunescope._io.write_csv

    def failing(path, rows, columns):
        if written:  # the second table: the disk is full
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        real(path, rows, columns)

    monkeypatch.setattr(tunescope._io, "write_csv", failing)
    out = tmp_path / "h"
    code = main(["heads", tuned, *FAST, "--prune-curve", "--step", "0.5", "--out", str(out)])
    assert code == 2 and "No space left" in capsys.readouterr().err
    assert written and not out.exists()  # heads.csv was written to a temporary, never renamed into place


def test_ctrl_c_while_scoring_leaves_nothing(tmp_path, tuned, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(heads_lib, "prune_curve", interrupted)
    out, small = tmp_path / "h", tmp_path / "small"
    args = ["heads", tuned, *FAST, "--prune-curve", "--prune", "0.5", "--export", str(small)]
    assert main([*args, "--out", str(out)]) == 130
    assert capsys.readouterr().err.startswith("interrupted")
    assert not out.exists() and not small.exists()


def test_the_cli_writes_the_columns_the_lens_declares():
    from tunescope import heads

    assert HEADS_COLUMNS == heads.HEADS_COLUMNS
