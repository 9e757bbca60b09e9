"""Users' own data: CSV, TSV and JSON-lines files with named text and label columns."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from tunescope.data._io import class_ids, infer_label_names, read_table, regression_values, text_column
from tunescope.data.examples import Examples
from tunescope.data.task import LabelKind
from tunescope.errors import InputError, UnknownNameError

__all__ = ["load_file"]


def load_file(
    path: str | os.PathLike[str],
    *,
    text: str,
    text_pair: str | None = None,
    label: str | None = None,
    label_kind: LabelKind = "classification",
    label_names: Sequence[str] | None = None,
    split: str = "file",
) -> Examples:
    """Read a CSV, TSV or JSON-lines file (``.gz`` allowed) into :class:`Examples`.

    CSV and TSV files need a header row and use standard quoting (as pandas and spreadsheets write
    them); JSON-lines files hold one object per line (``.json`` may also be one array of objects). The
    file must be UTF-8 (a byte-order mark is fine). Texts are kept as they are.

    No cell is dropped silently. A CSV/TSV row with more non-empty fields than the header is an error
    naming the line (an unquoted delimiter inside a text is the usual cause); trailing empty fields are
    ignored. A row with fewer fields than the header is fine as long as the text, text-pair and label
    columns are within it, otherwise it is an error naming the line. A quote that opens a field and is
    never closed is reported at the line where it opens, and a header that reads as one column holding
    tabs (in a ``.csv``) or commas (in a ``.tsv``) is reported as a file with the wrong extension.
    Files whose labels are all one class load normally; :attr:`Examples.present_classes` tells a caller
    that needs two classes.

    Args:
        path: the file.
        text: name of the text column.
        text_pair: name of the second text column, for pair tasks.
        label: name of the label column; ``None`` for unlabelled data.
        label_kind: ``classification`` (labels become class ids) or ``regression`` (labels are numbers).
        label_names: class names in id order; label cells must be one of them (or an id ``0..K-1`` when
            no name is a number). When ``None``, the sorted distinct labels of the file become the
            names (numerically sorted when they are all numbers).
        split: split name to record in the result.

    Returns:
        The examples; ``task`` is the file name.

    Raises:
        DataError: file not found or unreadable, unknown extension, damaged gzip, empty file, no rows,
            not UTF-8, a quote never closed, a row wider than the header, a used cell missing from a
            short row, missing or duplicated column, blank text, labels outside ``label_names``,
            regression labels that are not numbers. The message is one line naming the file, the line
            where there is one, and the fix, in words that fit both the CLI and Python.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "reviews.csv"
        >>> _ = path.write_text('review,stars\\n"Great, really",pos\\nDull,neg\\n', encoding="utf-8")
        >>> ex = load_file(path, text="review", label="stars")
        >>> ex.texts, ex.labels.tolist(), ex.label_names
        (['Great, really', 'Dull'], [1, 0], ('neg', 'pos'))
    """
    if label_kind not in get_args(LabelKind):
        raise UnknownNameError("label kind", label_kind, get_args(LabelKind))
    if label_kind == "regression" and label_names is not None:
        raise InputError("regression labels have no label_names; drop label_names or use classification")
    if label_names is not None and (not label_names or len(set(label_names)) != len(label_names)):
        raise InputError(f"label_names must be distinct and non-empty, got {list(label_names)}")
    file = Path(path).expanduser()
    table = read_table(file)
    table.require(text, role="text column", hint="name the text column with --text (text= in Python)")
    if text_pair is not None:
        table.require(
            text_pair,
            role="second text column",
            hint="name the second text column with --text-pair (text_pair= in Python)",
        )
    if label is not None:
        table.require(
            label,
            role="label column",
            hint="name the label column with --label (label= in Python), or leave it out for unlabelled data",
        )
    texts = text_column(table, text)
    pairs = None if text_pair is None else text_column(table, text_pair, role="second text column")
    labels: np.ndarray | None = None
    names: tuple[str, ...] | None = None
    if label is not None:
        values = table.cells(label, role="label column")
        if label_kind == "regression":
            labels = regression_values(values, table.lines, table.source)
        else:
            names = (
                tuple(label_names)
                if label_names is not None
                else infer_label_names(values, table.lines, table.source)
            )
            labels = class_ids(
                values,
                names,
                table.lines,
                table.source,
                fix="fix the row, or pass label_names that include it",
            )
    return Examples(
        texts=texts,
        text_pairs=pairs,
        labels=labels,
        task=file.name,
        split=split,
        label_names=names,
    )
