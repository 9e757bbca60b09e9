"""Low-level reading shared by the file readers, the GLUE loaders and the builtin tasks.

Everything here turns bytes into rows or rows into arrays, and raises :class:`DataError` with one line
that names the file, the line and the fix. Nothing here knows about tasks.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunescope.errors import DataError

#: File kinds the table readers understand, keyed by extension (``.gz`` may follow any of them).
FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}

_SNIPPET = 40


def snippet(value: object) -> str:
    """Short one-line ``repr`` of a cell value for error messages."""
    text = repr(value)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 4] + "...'"


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, newlines) to one space and strip the ends.

    Example:
        >>> normalize_whitespace("  The Château  is\\ta film \\r\\n")
        'The Château is a film'
    """
    return " ".join(text.split())


def check_file(path: Path) -> None:
    """Raise :class:`DataError` when ``path`` does not exist or is a folder."""
    if not path.exists():
        raise DataError(f"file not found: {path}; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a data file; pass the path of a .csv, .tsv or .jsonl file")


def read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when its name ends in ``.gz``.

    Raises:
        DataError: the file does not exist, is a folder, or is not valid gzip.
    """
    check_file(path)
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}); decompress or re-create it") from exc
    return data


def decode_utf8(data: bytes, source: str) -> str:
    """Decode UTF-8 (a leading byte-order mark is dropped) and say where it fails.

    Args:
        data: the raw bytes.
        source: the file name to put in the error message.

    Raises:
        DataError: the bytes are not UTF-8; the message gives the line and byte offset of the first bad
            byte and how to re-encode the file.

    Example:
        >>> decode_utf8("\\ufeffcafé".encode(), "x.csv")
        'café'
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{source} is not UTF-8: byte 0x{bad} at byte offset {exc.start} (line {line}); re-encode the "
            f"file as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {source} > fixed.csv`"
        ) from exc


def file_format(path: Path) -> str:
    """The table format of ``path`` from its extension (``csv``, ``tsv``, ``jsonl`` or ``json``).

    Raises:
        DataError: the extension is not one of :data:`FORMATS`.

    Example:
        >>> file_format(Path("reviews.tsv.gz"))
        'tsv'
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise DataError(
            f"cannot read {path.name}: unknown extension {ext or '(none)'!r}; use one of {known} "
            "(optionally followed by .gz)"
        )
    return FORMATS[ext]


@dataclass(frozen=True)
class Table:
    """Rows of a data file, each with the line it starts on (1-based).

    Attributes:
        source: file name used in error messages.
        columns: column names (the header, or every key seen in a JSON file, in first-seen order).
        rows: one mapping per row; a cell missing from a short CSV/TSV row is ``None``.
        lines: the line number of each row.
    """

    source: str
    columns: tuple[str, ...]
    rows: list[Mapping[str, object]]
    lines: list[int]

    def require(self, column: str, role: str = "column", hint: str = "") -> None:
        """Raise a :class:`DataError` naming ``column`` and the columns that exist, when it is absent."""
        if column not in self.columns:
            there = ", ".join(self.columns) or "(none)"
            raise DataError(
                f"{role} {column!r} not found in {self.source}; columns there: {there}"
                + (f" ({hint})" if hint else "")
            )


def read_table(
    path: Path,
    fmt: str | None = None,
    *,
    quotes: bool = True,
    names: Sequence[str] | None = None,
) -> Table:
    """Read a CSV, TSV, JSON-lines or JSON file into a :class:`Table`.

    CSV and TSV need a header row. JSON is either one object per line or one array of objects.

    Args:
        path: the file (``.gz`` allowed).
        fmt: ``csv``, ``tsv``, ``jsonl`` or ``json``; guessed from the extension when ``None``.
        quotes: honour CSV quoting (``"a, b"``); GLUE's TSV files need ``False``.
        names: column names for a CSV/TSV file without a header row (its first row is then data).

    Raises:
        DataError: missing file, unknown extension, empty file, no rows, not UTF-8, bad JSON.
    """
    check_file(path)
    fmt = fmt or file_format(path)
    text = decode_utf8(read_bytes(path), str(path))
    if not text.strip():
        raise DataError(f"{path} is empty; give a file with a header row and at least one data row")
    if fmt in ("csv", "tsv"):
        table = _read_delimited(text, str(path), "," if fmt == "csv" else "\t", quotes, names)
    else:
        table = _read_json(text, str(path), fmt)
    if not table.rows:
        raise DataError(f"{path} has no data rows (only a header?); add at least one row")
    return table


def _read_delimited(
    text: str, source: str, delimiter: str, quotes: bool, names: Sequence[str] | None
) -> Table:
    stream = io.StringIO(text, newline="")
    if quotes:
        reader = csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    else:
        reader = csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    rows: list[Mapping[str, object]] = []
    lines: list[int] = []
    header: list[str] | None = None if names is None else list(names)
    start = 1
    try:
        for record in reader:
            if header is None:
                header = [name.strip() for name in record]
            elif record and any(cell.strip() for cell in record):
                cells: list[object] = list(record[: len(header)])
                cells += [None] * (len(header) - len(cells))
                rows.append(dict(zip(header, cells, strict=True)))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{source} line {reader.line_num}: {exc}; check its quoting") from exc
    return Table(source, tuple(header or ()), rows, lines)


def _read_json(text: str, source: str, fmt: str) -> Table:
    stripped = text.lstrip()
    records: list[tuple[int, object]] = []
    if fmt == "json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source} line {exc.lineno} is not valid JSON: {exc.msg}") from exc
        # one array: every record is reported at line 1 except that we can count objects
        records = [(i + 1, obj) for i, obj in enumerate(data)]
        where = "item"
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{source} line {number} is not valid JSON ({exc.msg}); write one JSON object per line"
                ) from exc
        where = "line"
    columns: dict[str, None] = {}
    rows: list[Mapping[str, object]] = []
    lines: list[int] = []
    for number, obj in records:
        if not isinstance(obj, dict):
            raise DataError(
                f"{source} {where} {number} is a JSON {type(obj).__name__}, not an object; write one "
                'object like {"text": ..., "label": ...} per line'
            )
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
        lines.append(number)
    return Table(source, tuple(columns), rows, lines)


def text_column(
    table: Table, column: str, *, role: str = "text column", skip_blank: bool = False
) -> list[str]:
    """The cells of one text column as strings; blank or missing cells raise :class:`DataError`.

    Args:
        table: the rows.
        column: the column name (must exist: call :meth:`Table.require` first for a good message).
        role: what the column is, for the message.
        skip_blank: return ``""`` for blank cells instead of raising (callers drop those rows).
    """
    out: list[str] = []
    for row, line in zip(table.rows, table.lines, strict=True):
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            if skip_blank:
                out.append("")
                continue
            state = "missing" if value is None else "blank"
            raise DataError(
                f"{role} {column!r} is {state} on line {line} of {table.source}; fill it in or delete the row"
            )
        out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return out


def label_string(value: object) -> str:
    """Canonical string of a label cell: JSON ``true`` -> ``'True'``, ``1`` or ``1.0`` -> ``'1'``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def class_ids(
    values: Sequence[object], names: Sequence[str], lines: Sequence[int], source: str
) -> np.ndarray:
    """Map label cells to class ids ``0..K-1`` using ``names``.

    A cell matches a name exactly, then case-insensitively; failing that, an integer cell in ``0..K-1``
    is taken as the id itself (GLUE files store ``0``/``1``).

    Args:
        values: one label cell per row.
        names: the class names, in id order.
        lines: line number of each row, for error messages.
        source: file name for error messages.

    Returns:
        int64 array of shape ``(n_examples,)``.

    Raises:
        DataError: a cell is blank or matches no class; the message lists the allowed labels.

    Example:
        >>> class_ids(["pos", "NEG", "1", True], ["neg", "pos", "True"], [2, 3, 4, 5], "f.csv").tolist()
        [1, 0, 1, 2]
    """
    exact = {name: i for i, name in enumerate(names)}
    folded = {name.casefold(): i for i, name in enumerate(names)}
    # ids stand for themselves only when no class name is itself a number ("1".."5" star ratings)
    ids_allowed = not any(_as_int(name) is not None for name in names)
    out = np.empty(len(values), dtype=np.int64)
    for k, (value, line) in enumerate(zip(values, lines, strict=True)):
        text = "" if value is None else label_string(value)
        idx = exact.get(text, folded.get(text.casefold()))
        if idx is None and ids_allowed:
            number = _as_int(text)
            if number is not None and 0 <= number < len(names):
                idx = number
        if idx is None:
            what = "blank label" if not text else f"label {snippet(text)}"
            allowed = ", ".join(names) + (f" (or their ids 0..{len(names) - 1})" if ids_allowed else "")
            raise DataError(
                f"{what} on line {line} of {source} is not one of the allowed labels: {allowed}; "
                "fix the row or pass the right label names"
            )
        out[k] = idx
    return out


def infer_label_names(values: Sequence[object], lines: Sequence[int], source: str) -> tuple[str, ...]:
    """Class names of a user's file: the distinct label strings, sorted (numerically when all are numbers).

    Example:
        >>> infer_label_names(["10", "2", "2"], [1, 2, 3], "f.csv")
        ('2', '10')
    """
    names: set[str] = set()
    for value, line in zip(values, lines, strict=True):
        text = "" if value is None else label_string(value)
        if not text:
            raise DataError(f"blank label on line {line} of {source}; fill it in or delete the row")
        names.add(text)
    numbers = {name: _as_float(name) for name in names}
    if all(v is not None for v in numbers.values()):
        return tuple(sorted(names, key=lambda n: (numbers[n], n)))
    return tuple(sorted(names))


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def regression_values(values: Sequence[object], lines: Sequence[int], source: str) -> np.ndarray:
    """Parse regression labels as float64; anything that is not a finite number raises :class:`DataError`.

    Example:
        >>> regression_values(["3.5", 1, " 0 "], [1, 2, 3], "f.tsv").tolist()
        [3.5, 1.0, 0.0]
    """
    out = np.empty(len(values), dtype=np.float64)
    for k, (value, line) in enumerate(zip(values, lines, strict=True)):
        number = None if isinstance(value, bool) or value is None else _as_float(str(value).strip())
        if number is None or not math.isfinite(number):
            raise DataError(
                f"regression label {snippet(value)} on line {line} of {source} is not a finite number; "
                "regression labels must be numbers such as 3.2"
            )
        out[k] = number
    return out
