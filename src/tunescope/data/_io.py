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
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


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


def check_file(path: Path, expected: str = "a .csv, .tsv or .jsonl file") -> None:
    """Raise :class:`DataError` when ``path`` does not exist or is a folder.

    Args:
        path: the file.
        expected: what the file should be, for the message (``a .conllu file``).
    """
    if not path.exists():
        raise DataError(f"file not found: {path}; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a data file; pass the path of {expected}")


def read_bytes(path: Path, expected: str = "a .csv, .tsv or .jsonl file") -> bytes:
    """Read a file, gunzipping it when its name ends in ``.gz``.

    Raises:
        DataError: the file does not exist, is a folder, cannot be read (permissions), or is not valid
            gzip (cut short, damaged, or not compressed at all); each message says which and the fix.
    """
    check_file(path, expected)
    try:
        data = path.read_bytes()
    except OSError as exc:  # PermissionError, IsADirectoryError on a race, EIO on a bad disk
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"cannot read {path} ({reason}); check that the file is readable") from exc
    if path.suffix.lower() != ".gz":
        return data
    if not data.startswith(_GZIP_MAGIC):
        raise DataError(
            f"{path} is not gzip-compressed although its name ends in .gz; rename it to {path.stem}"
        )
    try:
        return gzip.decompress(data)
    except EOFError as exc:
        raise DataError(
            f"{path} is cut short: the gzip data ends before the end of the file it holds; copy or "
            "download it again"
        ) from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a bad deflate block zlib.error
        raise DataError(f"{path} is a damaged gzip file ({exc}); copy or re-create it") from exc


def decode_utf8(data: bytes, source: str) -> str:
    """Decode UTF-8 (a leading byte-order mark is dropped) and say where it fails.

    Args:
        data: the raw bytes.
        source: the file name to put in the error message.

    Raises:
        DataError: the bytes are not UTF-8; the message gives the line and byte offset of the first bad
            byte and how to re-encode the file, or says what the file is instead (UTF-16, gzip, zip).

    Example:
        >>> decode_utf8("\\ufeffcafé".encode(), "x.csv")
        'café'
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data.startswith(_UTF16_BOMS):
            raise DataError(
                f"{source} is UTF-16 (as Excel's 'Unicode Text' writes it), not UTF-8; re-encode it, e.g. "
                f"`iconv -f UTF-16 -t UTF-8 {source} > {_fixed_name(source)}`"
            ) from exc
        if data.startswith(_GZIP_MAGIC):
            raise DataError(
                f"{source} is gzip-compressed but its name does not end in .gz; rename it to "
                f"{Path(source).name}.gz or decompress it"
            ) from exc
        if data.startswith(_ZIP_MAGIC):
            raise DataError(
                f"{source} is a zip archive (an Excel .xlsx workbook?), not a text file; export the sheet "
                "as CSV UTF-8 or unzip it"
            ) from exc
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{source} is not UTF-8: byte 0x{bad} at byte offset {exc.start} (line {line}); re-encode the "
            f"file as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {source} > {_fixed_name(source)}`"
        ) from exc


def _fixed_name(source: str) -> str:
    """A name for a re-encoded copy: ``fixed.csv`` for ``x.csv``, ``fixed.conllu`` for ``t.conllu.gz``."""
    suffixes = [s for s in Path(source).suffixes if s.lower() != ".gz"]
    return "fixed" + (suffixes[-1] if suffixes else ".txt")


def read_first_line(path: Path) -> str:
    """The first line of a (not compressed) file, BOM and line end dropped, undecodable bytes replaced.

    Raises:
        DataError: the file cannot be opened or read.
    """
    try:
        with path.open("rb") as stream:
            first = stream.readline()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"cannot read {path} ({reason}); check that the file is readable") from exc
    return first.decode("utf-8-sig", errors="replace").rstrip("\r\n")


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


def renamed(path: Path, fmt: str) -> str:
    """``path``'s file name with its format extension replaced by ``fmt``'s (``.gz`` kept).

    Example:
        >>> renamed(Path("data/x.csv.gz"), "tsv")
        'x.tsv.gz'
    """
    name = path.name
    gz = name.lower().endswith(".gz")
    stem = name[:-3] if gz else name
    dot = stem.rfind(".")
    stem = stem[:dot] if dot > 0 else stem
    return f"{stem}.{fmt}" + (".gz" if gz else "")


@dataclass(frozen=True)
class Table:
    """Rows of a data file, each with the line it starts on (1-based).

    Attributes:
        source: file name used in error messages.
        columns: column names (the header, or every key seen in a JSON file, in first-seen order).
        rows: one mapping per row; a cell missing from a short CSV/TSV row is ``None``.
        lines: the line number of each row.
        widths: for a CSV/TSV file, the number of fields of each row (trailing empty fields beyond the
            header not counted); ``None`` for JSON.
        sniffed: for a CSV/TSV file whose header reads as one column holding another separator, what
            the file looks like and how to fix its name; ``""`` otherwise.
    """

    source: str
    columns: tuple[str, ...]
    rows: list[Mapping[str, object]]
    lines: list[int]
    widths: list[int] | None = None
    sniffed: str = ""

    def require(self, column: str, role: str = "column", hint: str = "") -> None:
        """Raise a :class:`DataError` naming ``column`` and the columns that exist, when it is absent.

        Also raises when the header names ``column`` twice (a dict row would keep only the last one).

        Args:
            column: the column name.
            role: what the column is (``text column``, ``label column``), for the message.
            hint: how to name another column, in the user's words (``name it with --text (text=)``).
        """
        count = self.columns.count(column)
        if count > 1:
            places = [str(i + 1) for i, name in enumerate(self.columns) if name == column]
            raise DataError(
                f"the header of {self.source} names {count} columns {column!r} (columns "
                f"{', '.join(places)}); rename all but one so the {role} is unambiguous"
            )
        if count:
            return
        if self.sniffed:
            raise DataError(f"{role} {column!r} not found in {self.source}: {self.sniffed}")
        there = ", ".join(repr(c) if not c or c != c.strip() else c for c in self.columns) or "(none)"
        near = [c for c in self.columns if c.strip().casefold() == column.strip().casefold()]
        message = f"{role} {column!r} not found in {self.source}; columns there: {there}"
        if near:
            message += f"; did you mean {near[0]!r}? (names are case-sensitive)"
        raise DataError(message + (f"; {hint}" if hint else ""))

    def cells(self, column: str, role: str = "column") -> list[object]:
        """The cells of ``column`` (``None`` where a JSON row lacks the key).

        Raises:
            DataError: a CSV/TSV row is too short to reach ``column``; the message names the line.
        """
        out = [row.get(column) for row in self.rows]
        for k, value in enumerate(out):
            if value is None and self.widths is not None:
                raise DataError(self.missing_cell(k, column, role))
        return out

    def missing_cell(self, k: int, column: str, role: str) -> str:
        """The message for row ``k`` having no cell in ``column``."""
        where = f"{role} {column!r} is missing on line {self.lines[k]} of {self.source}"
        if self.widths is not None and self.widths[k] < len(self.columns):
            width = self.widths[k]
            return (
                f"{where}: the row has {width} field{'s' if width != 1 else ''}, the header "
                f"{len(self.columns)}; complete the row (a text with a line break must be quoted)"
            )
        return f"{where}; fill it in or delete the row"


def read_table(
    path: Path,
    fmt: str | None = None,
    *,
    quotes: bool = True,
    names: Sequence[str] | None = None,
    wide_rows: Literal["error", "keep"] = "error",
) -> Table:
    """Read a CSV, TSV, JSON-lines or JSON file into a :class:`Table`.

    CSV and TSV need a header row. JSON is either one object per line or one array of objects.

    CSV/TSV rows whose number of fields differs from the header's are handled so that no cell is lost
    silently: a row with *more* non-empty fields than the header raises (``wide_rows="error"``) or is
    kept with its width recorded for the caller to skip (``"keep"``, for GLUE's official files); a row
    with *fewer* fields gets ``None`` for the missing cells, and reading a used column of such a row
    (:meth:`Table.cells`, :func:`text_column`) raises naming the line. Trailing empty fields are ignored.

    Args:
        path: the file (``.gz`` allowed).
        fmt: ``csv``, ``tsv``, ``jsonl`` or ``json``; guessed from the extension when ``None``.
        quotes: honour CSV quoting (``"a, b"``); GLUE's TSV files need ``False``.
        names: column names for a CSV/TSV file without a header row (its first row is then data).
        wide_rows: what to do with a CSV/TSV row that has more fields than the header.

    Raises:
        DataError: missing or unreadable file, unknown extension, damaged gzip, empty file, no rows, not
            UTF-8, a quote that is never closed, a row wider than the header, bad JSON, a JSON object
            that is not a list of rows.
    """
    check_file(path)
    fmt = fmt or file_format(path)
    text = decode_utf8(read_bytes(path), str(path))
    if not text.strip():
        raise DataError(f"{path} is empty; give a file with a header row and at least one data row")
    if fmt in ("csv", "tsv"):
        table = _read_delimited(text, path, fmt, quotes, names, wide_rows)
    else:
        table = _read_json(text, str(path), fmt)
    if not table.rows:
        raise DataError(f"{path} has no data rows (only a header?); add at least one row")
    return table


#: other separators a CSV/TSV header may turn out to use: (character, what the file then looks like)
_SEPARATORS: dict[str, tuple[tuple[str, str], ...]] = {
    "csv": (("\t", "tab-separated"), (";", "semicolon-separated")),
    "tsv": ((",", "comma-separated"), (";", "semicolon-separated")),
}


def _sniff(header: list[str], path: Path, fmt: str) -> str:
    """What a one-column header says about the file's real separator, with the fix; ``""`` if nothing."""
    if len(header) != 1:
        return ""
    cell = header[0]
    own = "," if fmt == "csv" else "\t"
    for char, looks in _SEPARATORS[fmt]:
        if char in cell and own not in cell:
            shown = snippet(cell)
            if char == "\t":
                fix = f"rename it to {renamed(path, 'tsv')}"
            elif char == ",":
                fix = f"rename it to {renamed(path, 'csv')}"
            else:
                fix = "save it with commas as separators (.csv) or tabs (.tsv)"
            return f"{path.name} looks {looks} (its header {shown} is one column with {char!r} in it); {fix}"
    return ""


def _read_delimited(
    text: str,
    path: Path,
    fmt: str,
    quotes: bool,
    names: Sequence[str] | None,
    wide_rows: str,
) -> Table:
    source = str(path)
    delimiter = "," if fmt == "csv" else "\t"
    lines = list(io.StringIO(text, newline=""))  # the same line breaks (\n, \r\n, \r) the csv module sees
    if quotes:
        reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    else:
        reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    rows: list[Mapping[str, object]] = []
    row_lines: list[int] = []
    widths: list[int] = []
    header: list[str] | None = None if names is None else list(names)
    sniffed = ""
    start = 1
    try:
        for record in reader:
            end = reader.line_num
            if quotes and (end > start or end == len(lines)):
                _check_quotes(lines, start, end, delimiter, source)
            if header is None:
                header = [name.strip() for name in record]
                sniffed = _sniff(header, path, fmt)
            elif record and any(cell.strip() for cell in record):
                width = len(record)
                while width > len(header) and not record[width - 1].strip():
                    width -= 1
                if width > len(header) and wide_rows == "error":
                    fix = sniffed or (
                        "quote fields that contain " + ('commas, like "a, b"' if delimiter == "," else "tabs")
                    )
                    raise DataError(
                        f"line {start} of {source} has {width} fields, the header has {len(header)}; {fix}"
                    )
                cells: list[object] = list(record[: len(header)])
                cells += [None] * (len(header) - len(cells))
                rows.append(dict(zip(header, cells, strict=True)))
                row_lines.append(start)
                widths.append(width)
            start = end + 1
    except csv.Error as exc:
        end = reader.line_num
        if quotes:
            _check_quotes(lines, start, end, delimiter, source, eof=end >= len(lines))
        raise DataError(
            f"line {end} of {source} cannot be read as {fmt.upper()} ({exc}); check its quoting"
        ) from exc
    return Table(source, tuple(header or ()), rows, row_lines, widths, sniffed)


_UNQUOTED_END = {",": re.compile(r"[,\r\n]"), "\t": re.compile(r"[\t\r\n]")}


def _runaway_quote(chunk: str, delimiter: str) -> int | None:
    """Offset in ``chunk`` (one CSV record) of a quote that opens a field and never closes properly.

    "Never closes properly": the chunk ends inside the quoted field, or the field spans a line break and
    its closing quote is followed by more text, as when the next quoted field's opening quote closes a
    quote someone forgot to close. Quoting rules are the csv module's defaults (``""`` inside quotes).
    """
    boundary = _UNQUOTED_END[delimiter]
    i, n = 0, len(chunk)
    while i < n:
        if chunk[i] == '"':  # i is always at the start of a field here
            j = i + 1
            while True:
                k = chunk.find('"', j)
                if k < 0:
                    return i
                if chunk.startswith('""', k):
                    j = k + 2
                    continue
                break
            after = chunk[k + 1 : k + 2]
            if after not in ("", delimiter, "\n", "\r") and ("\n" in chunk[i:k] or "\r" in chunk[i:k]):
                return i
            i = k + 1
        found = boundary.search(chunk, i)
        if found is None:
            return None
        i = found.end()
    return None


def _check_quotes(
    lines: list[str], start: int, end: int, delimiter: str, source: str, *, eof: bool = False
) -> None:
    """Raise when the record on ``lines[start-1:end]`` holds a quote that is never closed."""
    chunk = lines[start - 1 : end]
    offset = _runaway_quote("".join(chunk), delimiter)
    if offset is None:
        return
    line = start
    for text in chunk:
        if offset < len(text):
            break
        offset -= len(text)
        line += 1
    reach = f"line {end}" + (" (the end of the file)" if eof or end >= len(lines) else "")
    raise DataError(
        f"line {line} of {source} opens a quote that is never closed, so the field runs on to {reach}; "
        'close the quote, or write a quote inside a quoted field as two ("")'
    )


def _read_json(text: str, source: str, fmt: str) -> Table:
    records: list[tuple[int, object]] = []
    where = "line"
    whole: object = None
    parsed = False
    if fmt == "json":
        try:
            whole, parsed = json.loads(text), True
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                raise DataError(
                    f"{source} line {exc.lineno} is not valid JSON ({exc.msg}, column {exc.colno}); fix it, "
                    "or write one JSON object per line in a .jsonl file"
                ) from exc
            # not one JSON value: read it as JSON lines below
    if parsed and isinstance(whole, list):
        records = [(i + 1, obj) for i, obj in enumerate(whole)]
        where = "item"
    elif parsed:
        records = [(1, whole)]
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
    if len(records) == 1 and isinstance(records[0][1], dict):
        _check_not_wrapped(records[0][1], source)
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


def _check_not_wrapped(obj: dict[str, object], source: str) -> None:
    """Raise when a file's only object holds the rows (``{"data": [...]}``) or columns, not one row."""
    for key, value in obj.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            raise DataError(
                f"{source} is one JSON object whose key {key!r} holds the rows ({len(value)}); write just "
                f"that list (e.g. `jq '.{key}' {source} > rows.json`) or one object per line in a .jsonl file"
            )
    values = list(obj.values())
    if len(values) < 2:
        return
    first = values[0]
    same_keys = (
        isinstance(first, dict)
        and len(first) > 0
        and all(isinstance(v, dict) and v.keys() == first.keys() for v in values)
    )
    same_length = (
        isinstance(first, list)
        and len(first) > 1
        and all(isinstance(v, list) and len(v) == len(first) for v in values)
    )
    if same_keys or same_length:
        keys = ", ".join(str(k) for k in obj)
        raise DataError(
            f"{source} is one JSON object of columns ({keys}), not a list of rows; write one object per "
            "row, e.g. pandas `df.to_json('rows.jsonl', orient='records', lines=True)`"
        )


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
    for k, (row, line) in enumerate(zip(table.rows, table.lines, strict=True)):
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            if skip_blank:
                out.append("")
                continue
            if value is None:
                raise DataError(table.missing_cell(k, column, role))
            raise DataError(
                f"{role} {column!r} is blank on line {line} of {table.source}; fill it in or delete the row"
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
    values: Sequence[object],
    names: Sequence[str],
    lines: Sequence[int],
    source: str,
    *,
    fix: str = "fix or delete the row",
) -> np.ndarray:
    """Map label cells to class ids ``0..K-1`` using ``names``.

    A cell matches a name exactly, then case-insensitively; failing that, an integer cell in ``0..K-1``
    is taken as the id itself (GLUE files store ``0``/``1``).

    Args:
        values: one label cell per row.
        names: the class names, in id order.
        lines: line number of each row, for error messages.
        source: file name for error messages.
        fix: how to fix a label that fits no class, in the caller's words.

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
            what = _label_state(value, text)
            allowed = ", ".join(names) + (f" (or their ids 0..{len(names) - 1})" if ids_allowed else "")
            raise DataError(
                f"{what} on line {line} of {source} is not one of the allowed labels: {allowed}; {fix}"
            )
        out[k] = idx
    return out


def _label_state(value: object, text: str) -> str:
    """``missing label`` (no cell or JSON null), ``blank label`` or ``label 'x'``, for messages."""
    if value is None:
        return "missing label"
    return f"label {snippet(text)}" if text else "blank label"


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
            raise DataError(
                f"{_label_state(value, text)} on line {line} of {source}; fill it in or delete the row"
            )
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
