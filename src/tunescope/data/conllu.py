"""Read gold token labels (UPOS, XPOS or DEPREL) from a CoNLL-U treebank file.

CoNLL-U (https://universaldependencies.org/format.html) holds one word per line in ten tab-separated
columns (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), sentences separated by blank lines and
``#`` comment lines before each sentence. Two kinds of lines are not words and are skipped: multiword
token ranges (ID ``3-4``: the surface token ``don't`` spanning words 3 and 4) and empty nodes (ID
``3.1``, enhanced dependencies only). Parsing goes through the ``conllu`` package (the ``conllu`` extra);
this module adds line numbers to every error and fixes tag ids across splits.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tunescope.data._io import decode_utf8, read_bytes
from tunescope.data.tokens import TokenExamples, hold_out
from tunescope.errors import DataError, MissingExtraError, UnknownNameError

__all__ = ["ConlluField", "CONLLU_FIELDS", "UPOS_TAGS", "conllu_train_validation", "load_conllu"]

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
        path: a ``.conllu`` file (UTF-8; ``.gz`` allowed).
        field: which column gives the labels: ``upos``, ``xpos`` or ``deprel``.
        split: the split name recorded in the result (``train``, ``validation``, ``test``, ...).
        tag_names: a fixed tag scheme, usually from an earlier split.

    Returns:
        TokenExamples with ``task = field`` and ``silver = False``.

    Raises:
        MissingExtraError: the ``conllu`` package is not installed.
        UnknownNameError: ``field`` is not one of ``upos``, ``xpos``, ``deprel``.
        DataError: the file is missing, unreadable, empty, not UTF-8 or malformed (a line without 10
            tab-separated columns, a bad ID or HEAD; the message names the line), a word has no value in
            ``field``, or a tag is not in ``tag_names``.

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
    for start, block, cut in _sentence_blocks(path):
        sentence_words: list[str] = []
        sentence_values: list[tuple[str, int]] = []
        for line_no, token in _parse_block(conllu, path, start, block, cut=cut):
            if not isinstance(token["id"], int):  # (3, "-", 4) multiword range, (3, ".", 1) empty node
                continue
            value = token[field]
            if value is None or value == "_" or value == "":
                hint = (
                    " (this treebank may not annotate it); use --tag-field upos (field='upos')"
                    if field == "xpos"
                    else "; fill in the column or pick another --tag-field (field=)"
                )
                raise DataError(f"{path}:{line_no}: word {token['form']!r} has no {field} value{hint}")
            sentence_words.append(str(token["form"]))
            sentence_values.append((str(value), line_no))
        if sentence_words:
            words.append(sentence_words)
            values.append(sentence_values)
    if not words:
        raise DataError(
            f"{path} holds no sentences (only comments or blank lines); give a CoNLL-U file with one word "
            "per line in 10 tab-separated columns"
        )

    names = _tag_names(field, tag_names, {tag for tagged in values for tag, _ in tagged})
    index = {name: i for i, name in enumerate(names)}
    tags: list[list[int]] = []
    for tagged in values:
        ids = []
        for tag, line_no in tagged:
            if tag not in index:
                raise DataError(
                    f"{path}:{line_no}: {field} tag {tag!r} is not among the {len(names)} tags of the "
                    "training split (tag_names); train on a file that has every tag, or pass tag_names "
                    "that include it"
                )
            ids.append(index[tag])
        tags.append(ids)
    return TokenExamples(words, tags, names, str(field), split)


def conllu_train_validation(
    path: str | os.PathLike[str],
    *,
    field: ConlluField | str = "upos",
    validation: str | os.PathLike[str] | None = None,
    seed: int = 0,
    what: str | None = None,
    fix: str = "a validation file",
) -> tuple[TokenExamples, TokenExamples]:
    """A treebank as tagger training data: its sentences, and validation sentences with the same tag ids.

    The validation sentences come from the ``validation`` file (read with the training file's
    ``tag_names``) or, without one, are 10% of the training file's sentences held out by ``seed``
    (:func:`~tunescope.data.tokens.hold_out`).

    Args:
        path: the training ``.conllu`` file.
        field: which column gives the labels: ``upos``, ``xpos`` or ``deprel``.
        validation: a ``.conllu`` file to validate on.
        seed: seed of the hold-out.
        what, fix: how a too-small hold-out's error names the data (default: ``path``) and the remedy.

    Returns:
        ``(train, validation)``, with splits ``train`` and ``validation``.

    Raises:
        DataError: as :func:`load_conllu`, or fewer than 4 sentences to hold out from.
    """
    train = load_conllu(path, field=field, split="train")
    if validation is not None:
        return train, load_conllu(validation, field=field, split="validation", tag_names=train.tag_names)
    return hold_out(train, seed=seed, what=str(path) if what is None else what, fix=fix)


def _sentence_blocks(path: Path) -> Iterator[tuple[int, list[str], bool]]:
    """(first line number, lines, cut) per blank-line separated block.

    ``cut`` is true for the last block of a file that does not end in a line break (a cut download).
    """
    if not path.exists():
        raise DataError(
            f"cannot read CoNLL-U file {path}: file not found; check the path (relative paths start at "
            f"{Path.cwd()})"
        )
    text = decode_utf8(read_bytes(path, "a .conllu file"), str(path))
    if not text.strip():
        raise DataError(f"{path} is empty; give a CoNLL-U file with one word per line")
    block: list[str] = []
    start = 1
    # the same line breaks (\n, \r\n, \r) as reading the file with newline=""
    for line_no, raw in enumerate(io.StringIO(text, newline=""), start=1):
        line = raw.rstrip("\r\n")
        if line.strip():
            if not block:
                start = line_no
            block.append(line)
            continue
        if block:
            yield start, block, False
            block = []
    if block:
        yield start, block, not text.endswith(("\n", "\r"))


def _parse_block(
    conllu: Any, path: Path, start: int, block: list[str], *, cut: bool = False
) -> list[tuple[int, Any]]:
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
            if n_columns == 1 and len(line.split()) == _N_COLUMNS:
                fix = "its columns are separated by spaces, CoNLL-U needs tabs"
            elif n_columns < _N_COLUMNS and offset == len(block) - 1 and cut:
                fix = "the file may be cut short; copy or download it again"
            else:
                fix = "give every word line 10 columns (_ for an empty one)"
            raise DataError(
                f"{path}:{line_no}: expected {_N_COLUMNS} tab-separated columns, found {n_columns}: "
                f"{line[:60]!r}; {fix}"
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
