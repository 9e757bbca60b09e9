"""Damaged data files: each ends in one DataError line naming the file, the line and the fix.

One case per kind of damage a user's file (``--data``), a treebank (``--conllu``) or a GLUE folder
(``--data-dir``) can have, and a set of well-formed files the checks must keep loading exactly as before.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunescope.data import Examples, get_task, load_file
from tunescope.data.conllu import load_conllu
from tunescope.errors import DataError

HAS_CONLLU = importlib.util.find_spec("conllu") is not None
WORD = "1\tCats\tcat\tNOUN\tNNS\t_\t2\tnsubj\t_\t_\n2\tsleep\tsleep\tVERB\tVBP\t_\t0\troot\t_\t_\n"
TREEBANK = "# sent_id = 1\n" + WORD + "\n"
BIG = b"text,label\n" + b"".join(b"row %d,pos\n" % i for i in range(300))
BIG_GZ = gzip.compress(BIG)


@dataclass(frozen=True)
class Case:
    """One damaged file: where it goes, what it holds, how it is loaded, what the message must say."""

    name: str  # path under tmp_path; its last part must appear in the message
    content: bytes | str | None  # None: the file is not written
    phrases: tuple[str, ...]
    loader: str = "file"  # file (load_file), conllu (load_conllu) or glue:TASK:SPLIT (Task.load)
    kwargs: dict[str, Any] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # library spellings a CLI user must not see


CASES: dict[str, Case] = {
    # 1. ragged CSV/TSV rows
    "row wider than the header": Case(
        "wide.csv",
        "id,text,label\n1,a,pos\n2,b,neg\n3,c,pos\n4,d,neg\n5,e,pos\n6,Great, really,pos\n",
        ("line 7", "has 4 fields, the header has 3", "quote fields that contain commas"),
    ),
    "TSV row wider than the header": Case(
        "wide.tsv", "text\tlabel\ngood\tpos\nbad\tmovie\tneg\n", ("line 3", "3 fields", "tabs")
    ),
    "short row without its text": Case(
        "short.csv", "label,text\n1,good\n0\n", ("text column 'text' is missing on line 3", "1 field")
    ),
    "short row without its label": Case(
        "short_label.csv",
        "text,label\ngood,pos\nbad\n",
        ("label column 'label' is missing on line 3", "the header 2", "complete the row"),
    ),
    # 2. a quote that is never closed
    "quote never closed (runs to the end)": Case(
        "quote.csv",
        'text,label\ngood,pos\n"abc,neg\nbad,neg\nok,pos\n',
        ("line 3", "opens a quote that is never closed", "end of the file"),
    ),
    "quote never closed (closed by a later quote)": Case(
        "quote_mid.csv",
        'text,label\ngood,pos\n"abc,neg\nbad,neg\n"ok",pos\nfine,neg\n',
        ("line 3", "never closed", "line 5"),
    ),
    "quote never closed (past the csv field limit)": Case(
        "quote_big.csv",
        'text,label\n"abc,pos\n' + "some more text here,neg\n" * 8000,
        ("line 2", "never closed"),
    ),
    # 3. the wrong separator for the extension
    "TSV named .csv": Case(
        "x.csv", "text\tlabel\ngood\tpos\n", ("looks tab-separated", "rename it to x.tsv")
    ),
    "CSV named .tsv": Case(
        "y.tsv", "text,label\ngood,pos\n", ("looks comma-separated", "rename it to y.csv")
    ),
    "gzipped TSV named .csv.gz": Case(
        "z.csv.gz", gzip.compress(b"text\tlabel\ngood\tpos\n"), ("tab-separated", "z.tsv.gz")
    ),
    "semicolon-separated CSV": Case(
        "semi.csv", "text;label\ngood, yes;pos\n", ("line 2", "looks semicolon-separated")
    ),
    # 4. messages in the user's words
    "no such text column": Case(
        "cols.csv",
        "a,b\nx,y\n",
        ("text column 'sentence' not found", "columns there: a, b", "--text", "text="),
        kwargs={"text": "sentence", "label": "b"},
        absent=("NAME", "=None", "or None"),
    ),
    "no such label column": Case(
        "cols_label.csv",
        "a,b\nx,y\n",
        ("label column 'label' not found", "--label", "leave it out"),
        kwargs={"text": "a", "label": "label"},
        absent=("NAME", "=None", "or None"),
    ),
    "no such second text column": Case(
        "cols_pair.csv",
        "a,b\nx,y\n",
        ("second text column 'c' not found", "--text-pair", "text_pair="),
        kwargs={"text": "a", "text_pair": "c"},
        absent=("NAME", "=None"),
    ),
    "column name in another case": Case(
        "case.csv", "Text,Label\na,pos\n", ("did you mean 'Text'", "case-sensitive"), kwargs={"text": "text"}
    ),
    "column named twice": Case(
        "dup.csv", "text,text,label\na,b,pos\n", ("names 2 columns 'text'", "columns 1, 2", "rename")
    ),
    "label outside label_names": Case(
        "names.csv",
        "text,label\na,pos\nb,maybe\n",
        ("label 'maybe' on line 3", "allowed labels: neg, pos", "label_names"),
        kwargs={"label_names": ("neg", "pos")},
    ),
    # 6. other damage: encodings, compression, JSON, folders
    "Windows-1252 bytes": Case(
        "latin.csv", b"text,label\ncaf\xe9,pos\n", ("not UTF-8", "line 2", "iconv -f WINDOWS-1252")
    ),
    "UTF-16 from Excel": Case(
        "u16.csv", "text,label\na,pos\n".encode("utf-16"), ("UTF-16", "iconv -f UTF-16")
    ),
    "gzip without .gz": Case("packed.csv", gzip.compress(b"text\na\n"), ("gzip-compressed", "packed.csv.gz")),
    ".gz that is not gzip": Case(
        "plain.csv.gz", b"text\na\n", ("not gzip-compressed", "rename it to plain.csv")
    ),
    "gzip cut short": Case("cut.csv.gz", BIG_GZ[: len(BIG_GZ) // 2], ("cut short", "download it again")),
    "gzip damaged": Case(
        "damaged.csv.gz", BIG_GZ[:20] + b"\x00" * 40 + BIG_GZ[60:], ("damaged gzip", "re-create it")
    ),
    "xlsx renamed .csv": Case(
        "sheet.csv", b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb5U\x8a\xff", ("zip archive", "CSV")
    ),
    "JSONL with one bad line": Case(
        "bad.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": \n{"text": "c", "label": 0}\n',
        ("line 2 is not valid JSON", "one JSON object per line"),
    ),
    "JSON array with a syntax error": Case(
        "array.json",
        '[{"text": "a", "label": 1},\n {"text": "b" "label": 0}]',
        ("line 2 is not valid JSON", "column"),
    ),
    "JSON object holding the rows": Case(
        "wrapped.json",
        json.dumps({"version": 2, "data": [{"text": "a", "label": 1}]}, indent=2),
        ("one JSON object", "key 'data' holds the rows (1)", "jq"),
    ),
    "JSON object of columns (pandas to_json)": Case(
        "columns.json",
        json.dumps({"text": {"0": "a", "1": "b"}, "label": {"0": 1, "1": 0}}),
        ("JSON object of columns", "orient='records'"),
    ),
    "missing file": Case("nope.csv", None, ("file not found",)),
    "folder instead of a file": Case("folder.csv/inner.csv", "text\na\n", ("is a folder",)),
    # CoNLL-U (--conllu)
    "CoNLL-U line with 4 columns": Case(
        "cols.conllu",
        TREEBANK + "1\tDogs\tdog\tNOUN\n2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_\n",
        (":5: expected 10 tab-separated columns, found 4", "10 columns"),
        loader="conllu",
    ),
    "CoNLL-U with spaces for tabs": Case(
        "spaces.conllu", TREEBANK.replace("\t", " "), (":2:", "separated by spaces", "tabs"), loader="conllu"
    ),
    "CoNLL-U cut mid-sentence": Case(
        "cut.conllu", TREEBANK + "1\tDogs\tdog\tNO", (":5:", "cut short"), loader="conllu"
    ),
    "CoNLL-U empty": Case("empty.conllu", "", ("is empty",), loader="conllu"),
    "CoNLL-U with comments only": Case(
        "comments.conllu", "# sent_id = 1\n\n", ("no sentences", "tab-separated"), loader="conllu"
    ),
    "CoNLL-U not UTF-8": Case(
        "latin.conllu",
        (TREEBANK * 3).encode() + "1\tcaf\xe9\t_\tX\t_\t_\t0\troot\t_\t_\n".encode("latin-1"),
        ("not UTF-8", "line 13"),
        loader="conllu",
    ),
    "CoNLL-U missing": Case("nope.conllu", None, ("file not found",), loader="conllu"),
    "CoNLL-U folder": Case("tb.conllu/x", "", ("is a folder", ".conllu"), loader="conllu"),
    "CoNLL-U without xpos": Case(
        "noxpos.conllu",
        TREEBANK.replace("NNS", "_"),
        (":2: word 'Cats' has no xpos value", "--tag-field upos"),
        loader="conllu",
        kwargs={"field": "xpos"},
    ),
    # GLUE folders (--data-dir)
    "GLUE folder without the split's TSV": Case(
        "glue/RTE/dev.tsv",
        None,
        ("has no dev.tsv for split 'validation'", "files there: train.tsv"),
        loader="glue:rte:validation",
    ),
    "GLUE --data-dir that is a file": Case(
        "glue", "not a folder", ("is a file, not a folder", "--data-dir"), loader="glue:rte:train"
    ),
    "GLUE TSV not UTF-8": Case(
        "glue/SST-2/train.tsv",
        b"sentence\tlabel\ncaf\xe9\t1\n",
        ("not UTF-8", "line 2"),
        loader="glue:sst2:train",
    ),
    "GLUE TSV with only broken rows": Case(
        "glue/SST-2/train.tsv",
        "sentence\tlabel\ngood\tmovie\t1\n",
        ("no row with all of sentence filled in",),
        loader="glue:sst2:train",
    ),
}


def _load(case: Case, tmp_path: Path) -> object:
    path = tmp_path / case.name
    if case.content is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.content.encode("utf-8") if isinstance(case.content, str) else case.content)
    if case.loader == "glue:rte:validation":  # the folder exists, the split's file does not
        (tmp_path / "glue" / "RTE").mkdir(parents=True, exist_ok=True)
        (tmp_path / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    if case.name.endswith("/inner.csv") or case.name.endswith("/x"):
        path = path.parent  # the folder itself is what gets loaded
    if case.loader == "file":
        return load_file(path, **{"text": "text", "label": "label", **case.kwargs})
    if case.loader == "conllu":
        return load_conllu(path, **case.kwargs)
    _, task, split = case.loader.split(":")
    return get_task(task).load(split, data_dir=tmp_path / "glue")


@pytest.mark.parametrize("kind", list(CASES))
def test_damaged_file_gives_one_line_naming_file_and_fix(kind: str, tmp_path: Path) -> None:
    case = CASES[kind]
    if case.loader == "conllu" and not HAS_CONLLU:
        pytest.skip("needs the conllu extra")
    with pytest.raises(DataError) as info:
        _load(case, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    named = (
        Path(case.name).name if not case.name.endswith(("/inner.csv", "/x")) else Path(case.name).parent.name
    )
    assert named in message, message
    for phrase in case.phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    for spelling in case.absent:
        assert spelling not in message, message


def test_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.csv"
    path.write_text("text\na\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(
        DataError, match=r"cannot read .*locked\.csv \(Permission denied\); check that"
    ) as info:
        load_file(path, text="text")
    assert "\n" not in str(info.value)


def test_glue_ragged_rows_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\tmovie\t0\nshort\nok\t0\n")
    with caplog.at_level(logging.WARNING, logger="tunescope.data.glue"):
        ex = get_task("sst2").load("train", data_dir=tmp_path)
    assert ex.texts == ["good", "ok"] and ex.labels is not None and ex.labels.tolist() == [1, 0]
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "more fields than the header (first at line 3: 3 fields, the header has 2)" in w for w in warnings
    )
    assert any("missing label (first at line 4" in w for w in warnings)
    assert all("\n" not in w and "train.tsv" in w for w in warnings)


# -- well-formed files still load exactly as before --------------------------------------------------------

GOOD: dict[str, tuple[str, bytes, list[str], list[str]]] = {
    "quoted commas, doubled quotes, embedded newlines": (
        "q.csv",
        b'text,label\n"Great, really ""good""",pos\n"two\nlines",neg\n"a\r\nb",pos\n',
        ['Great, really "good"', "two\nlines", "a\r\nb"],
        ["pos", "neg", "pos"],
    ),
    "no trailing newline": ("n.csv", b"text,label\na,pos\nb,neg", ["a", "b"], ["pos", "neg"]),
    "CRLF line ends": ("crlf.csv", b"text,label\r\na,pos\r\nb,neg\r\n", ["a", "b"], ["pos", "neg"]),
    "CR line ends": ("cr.csv", b"text,label\ra,pos\rb,neg\r", ["a", "b"], ["pos", "neg"]),
    "byte-order mark": ("bom.csv", "\ufefftext,label\ncafé,pos\n".encode(), ["café"], ["pos"]),
    "blank lines and trailing empty fields": (
        "blank.csv",
        b"text,label,\n\na,pos,\nb,neg,,\n\n",
        ["a", "b"],
        ["pos", "neg"],
    ),
    "short row missing only an unused column": (
        "unused.csv",
        b"text,label,note\na,pos,x\nb,neg\n",
        ["a", "b"],
        ["pos", "neg"],
    ),
    "stray quote after a closed one, and a quote inside a field": (
        "stray.csv",
        b'text,label\n"Great" movie,pos\n5" screen,neg\n',
        ["Great movie", '5" screen'],
        ["pos", "neg"],
    ),
    "last row quoted, no newline": (
        "last.csv",
        b'text,label\na,pos\n"b, c",neg',
        ["a", "b, c"],
        ["pos", "neg"],
    ),
    "TSV with commas and quotes": (
        "t.tsv",
        b'text\tlabel\nGreat, really\tpos\n"a\tb"\tneg\n',
        ["Great, really", "a\tb"],
        ["pos", "neg"],
    ),
    "gzipped CSV": ("g.csv.gz", gzip.compress(b"text,label\na,pos\n"), ["a"], ["pos"]),
    "JSON lines with blank lines": (
        "j.jsonl",
        b'{"text": "a", "label": "pos"}\n\n{"text": "b", "label": "neg"}\n',
        ["a", "b"],
        ["pos", "neg"],
    ),
    "pretty-printed JSON array": (
        "a.json",
        json.dumps([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}], indent=2).encode(),
        ["a", "b"],
        ["pos", "neg"],
    ),
    "one JSON object that is one row": ("one.json", b'{"text": "a", "label": "pos"}', ["a"], ["pos"]),
    "JSON lines in a .json file": (
        "lines.json",
        b'{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n',
        ["a", "b"],
        ["pos", "neg"],
    ),
}


@pytest.mark.parametrize("kind", list(GOOD))
def test_well_formed_files_still_load(kind: str, tmp_path: Path) -> None:
    name, content, texts, labels = GOOD[kind]
    path = tmp_path / name
    path.write_bytes(content)
    ex = load_file(path, text="text", label="label")
    assert ex.texts == texts
    assert ex.labels is not None and ex.label_names is not None
    assert [ex.label_names[i] for i in ex.labels] == labels


def test_one_class_file_loads_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("text,label\na,pos\nb,pos\n")
    ex = load_file(path, text="text", label="label")
    assert ex.label_names == ("pos",) and ex.labels is not None and ex.labels.tolist() == [0, 0]
    assert ex.class_counts == {"pos": 2} and ex.present_classes == ("pos",)
    given = load_file(path, text="text", label="label", label_names=["neg", "pos"])
    assert given.class_counts == {"neg": 0, "pos": 2} and given.present_classes == ("pos",)
    assert load_file(path, text="text").present_classes == ()
    assert load_file(path, text="text").class_counts is None


def test_class_counts_without_names_and_for_regression() -> None:
    ex = Examples(["a", "b", "c"], None, np.array([2, -1, 2]), "t", "s", None)
    assert ex.class_counts == {"-1": 1, "2": 2} and ex.present_classes == ("-1", "2")
    reg = Examples(["a"], None, np.array([0.5]), "t", "s", None)
    assert reg.class_counts is None and reg.present_classes == ()
    empty = Examples([], None, np.array([], dtype=np.int64), "t", "s", ("neg", "pos"))
    assert empty.class_counts == {"neg": 0, "pos": 0} and empty.present_classes == ()
