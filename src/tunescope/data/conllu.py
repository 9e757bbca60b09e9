"""Read gold token labels (UPOS, XPOS or DEPREL) from a CoNLL-U treebank file.

CoNLL-U (https://universaldependencies.org/format.html) holds one word per line in ten tab-separated
columns (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), sentences separated by blank lines and
``#`` comment lines before each sentence. Two kinds of lines are not words and are skipped: multiword
token ranges (ID ``3-4``: the surface token ``don't`` spanning words 3 and 4) and empty nodes (ID
``3.1``, enhanced dependencies only). Parsing goes through the ``conllu`` package (the ``conllu`` extra);
this module adds line numbers to every error and fixes tag ids across splits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tunescope.data.tokens import TokenExamples
from tunescope.errors import DataError, MissingExtraError, UnknownNameError

__all__ = ["ConlluField", "CONLLU_FIELDS", "UPOS_TAGS", "load_conllu"]

ConlluField = Literal["upos", "xpos", "deprel"]
#: column name -> what it holds
CONLLU_FIELDS: dict[str, str] = {
    "upos": "universal part-of-speech tag (17 tags)",
    "xpos": "language-specific part-of-speech tag (e.g. Penn Treebank tags), if the treebank has them",
    "deprel": "universal dependency relation to the head, with its subtype (e.g. nmod:poss)",
}
#: the 17 universal POS tags in the order of the UD documentation; the default ``upos`` id scheme
UPOS_TAGS: tuple[str, ...] = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
_N_COLUMNS = 10


def load_conllu(
    path: str | os.PathLike[str],
    *,
    field: ConlluField | str = "upos",
    split: str = "file",
    tag_names: Sequence[str] | None = None,
) -> TokenExamples:
    """Read one CoNLL-U file into words and tag ids, one example per sentence.

    Tag ids: with ``tag_names`` given (e.g. ``train.tag_names`` when reading the test split), tags map to
    those ids and a tag outside them is an error, so ids match across splits. Without it, ``upos`` uses
    :data:`UPOS_TAGS` (any non-standard tag appended in sorted order), ``xpos`` and ``deprel`` the sorted
    tags of this file.

    Args:
        path: a ``.conllu`` file (UTF-8).
        field: which column gives the labels: ``upos``, ``xpos`` or ``deprel``.
        split: the split name recorded in the result (``train``, ``validation``, ``test``, ...).
        tag_names: a fixed tag scheme, usually from an earlier split.

    Returns:
        TokenExamples with ``task = field`` and ``silver = False``.

    Raises:
        MissingExtraError: the ``conllu`` package is not installed.
        UnknownNameError: ``field`` is not one of ``upos``, ``xpos``, ``deprel``.
        DataError: the file is missing, unreadable or malformed (the message names the line), a word has
            no value in ``field``, or a tag is not in ``tag_names``.

    Example:
        >>> import tempfile
        >>> lines = ["# text = Cats sleep.", "1\\tCats\\tcat\\tNOUN\\tNNS\\t_\\t2\\tnsubj\\t_\\t_",
        ...          "2\\tsleep\\tsleep\\tVERB\\tVBP\\t_\\t0\\troot\\t_\\t_", ""]
        >>> with tempfile.NamedTemporaryFile("w", suffix=".conllu", delete=False) as f:
        ...     _ = f.write("\\n".join(lines) + "\\n")
        >>> ex = load_conllu(f.name, field="xpos")
        >>> ex.words, ex.tag_names
        ([['Cats', 'sleep']], ('NNS', 'VBP'))
    """
    if field not in CONLLU_FIELDS:
        raise UnknownNameError("CoNLL-U field", str(field), CONLLU_FIELDS)
    try:
        import conllu
    except ImportError as err:
        raise MissingExtraError("conllu", "conllu", "reading CoNLL-U files") from err

    path = Path(path)
    words: list[list[str]] = []
    values: list[list[tuple[str, int]]] = []  # (tag, line number) per word
    for start, block in _sentence_blocks(path):
        sentence_words: list[str] = []
        sentence_values: list[tuple[str, int]] = []
        for line_no, token in _parse_block(conllu, path, start, block):
            if not isinstance(token["id"], int):  # (3, "-", 4) multiword range, (3, ".", 1) empty node
                continue
            value = token[field]
            if value is None or value == "_" or value == "":
                hint = " (this treebank may not annotate it; try field='upos')" if field == "xpos" else ""
                raise DataError(f"{path}:{line_no}: word {token['form']!r} has no {field} value{hint}")
            sentence_words.append(str(token["form"]))
            sentence_values.append((str(value), line_no))
        if sentence_words:
            words.append(sentence_words)
            values.append(sentence_values)
    if not words:
        raise DataError(f"{path} holds no sentences; is it a CoNLL-U file?")

    names = _tag_names(field, tag_names, {tag for tagged in values for tag, _ in tagged})
    index = {name: i for i, name in enumerate(names)}
    tags: list[list[int]] = []
    for tagged in values:
        ids = []
        for tag, line_no in tagged:
            if tag not in index:
                raise DataError(
                    f"{path}:{line_no}: {field} tag {tag!r} is not among the {len(names)} given tag_names; "
                    "read the splits with the tag_names of the split that has every tag (usually train)"
                )
            ids.append(index[tag])
        tags.append(ids)
    return TokenExamples(words, tags, names, str(field), split)


def _sentence_blocks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number of the block's first line, its lines) per blank-line separated block."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as err:
        raise DataError(f"cannot read CoNLL-U file {path}: {err}") from err
    block: list[str] = []
    start = 1
    with handle:
        line_no = 0
        try:
            for line_no, raw in enumerate(handle, start=1):
                line = raw.rstrip("\r\n")
                if line.strip():
                    if not block:
                        start = line_no
                    block.append(line)
                    continue
                if block:
                    yield start, block
                    block = []
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: line {line_no + 1} is not UTF-8 ({err.reason})") from err
    if block:
        yield start, block


def _parse_block(conllu: Any, path: Path, start: int, block: list[str]) -> list[tuple[int, Any]]:
    """The tokens of one sentence with their line numbers; DataError naming the line if malformed."""
    token_lines: list[int] = []
    for offset, line in enumerate(block):
        line_no = start + offset
        if line.startswith("#"):
            if token_lines:
                raise DataError(f"{path}:{line_no}: comment line inside a sentence (comments go before it)")
            continue
        n_columns = len(line.split("\t"))
        if n_columns != _N_COLUMNS:
            raise DataError(
                f"{path}:{line_no}: expected {_N_COLUMNS} tab-separated columns, found {n_columns}: "
                f"{line[:80]!r}"
            )
        token_lines.append(line_no)
    text = "\n".join(block) + "\n"
    try:
        sentence = conllu.parse_token_and_metadata(text)
    except conllu.exceptions.ParseException as err:
        raise DataError(f"{path}:{_bad_line(conllu, block, start)}: malformed CoNLL-U ({err})") from err
    if len(sentence) != len(token_lines):
        raise DataError(f"{path}:{start}: could not read the sentence starting here as CoNLL-U")
    return list(zip(token_lines, sentence, strict=True))


def _bad_line(conllu: Any, block: list[str], start: int) -> int:
    """The first line of ``block`` that conllu refuses on its own (the block's start if none)."""
    for offset, line in enumerate(block):
        if line.startswith("#"):
            continue
        try:
            conllu.parse_token_and_metadata(line + "\n")
        except conllu.exceptions.ParseException:
            return start + offset
    return start


def _tag_names(field: str, given: Sequence[str] | None, seen: set[str]) -> tuple[str, ...]:
    if given is not None:
        names = tuple(str(name) for name in given)
        if len(set(names)) != len(names):
            raise DataError(
                f"tag_names has duplicates: {sorted(n for n in set(names) if names.count(n) > 1)}"
            )
        return names
    if field == "upos":
        return UPOS_TAGS + tuple(sorted(seen - set(UPOS_TAGS)))
    return tuple(sorted(seen))
