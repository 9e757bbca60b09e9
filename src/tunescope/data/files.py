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
    file must be UTF-8. Texts are kept as they are.

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
        DataError: file not found, unknown extension, empty file, no rows, not UTF-8, missing column,
            blank text, labels outside ``label_names``, regression labels that are not numbers.

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
    table.require(text, role="text column", hint="pass text=NAME with one of them")
    if text_pair is not None:
        table.require(text_pair, role="second text column", hint="pass text_pair=NAME with one of them")
    if label is not None:
        table.require(label, role="label column", hint="pass label=NAME with one of them, or label=None")
    texts = text_column(table, text)
    pairs = None if text_pair is None else text_column(table, text_pair, role="second text column")
    labels: np.ndarray | None = None
    names: tuple[str, ...] | None = None
    if label is not None:
        values = [row.get(label) for row in table.rows]
        if label_kind == "regression":
            labels = regression_values(values, table.lines, table.source)
        else:
            names = (
                tuple(label_names)
                if label_names is not None
                else infer_label_names(values, table.lines, table.source)
            )
            labels = class_ids(values, names, table.lines, table.source)
    return Examples(
        texts=texts,
        text_pairs=pairs,
        labels=labels,
        task=file.name,
        split=split,
        label_names=names,
    )
