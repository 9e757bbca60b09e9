"""GLUE and SuperGLUE task definitions, loaded from a local folder or through ``datasets``.

Local layout (what ``download_glue_data.py`` writes, and SuperGLUE's zip files)::

    DATA_DIR/CoLA/{train,dev,test}.tsv      no header in train/dev: source, label, original label, sentence
    DATA_DIR/SST-2/{train,dev,test}.tsv     sentence, label
    DATA_DIR/MRPC/{train,dev,test}.tsv      Quality, #1 ID, #2 ID, #1 String, #2 String
    DATA_DIR/STS-B/{train,dev,test}.tsv     ... sentence1, sentence2, score (by header name)
    DATA_DIR/QQP/{train,dev,test}.tsv       id, qid1, qid2, question1, question2, is_duplicate
    DATA_DIR/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv, test_matched.tsv, test_mismatched.tsv
                                            ... sentence1, sentence2, ..., gold_label
    DATA_DIR/QNLI/{train,dev,test}.tsv      index, question, sentence, label (entailment / not_entailment)
    DATA_DIR/RTE/{train,dev,test}.tsv       index, sentence1, sentence2, label (entailment / not_entailment)
    DATA_DIR/WNLI/{train,dev,test}.tsv      index, sentence1, sentence2, label (0 / 1)
    DATA_DIR/BoolQ/{train,val,test}.jsonl   question, passage, label (true / false)
    DATA_DIR/CB/{train,val,test}.jsonl      premise, hypothesis, label

GLUE TSV files are read without quote processing (``csv.QUOTE_NONE``), as their sentences contain
unbalanced quote characters. Test files carry no labels, so test splits load with ``labels=None``.
Rows of an official file that are cut short (a text or the label missing) or have a blank text are
skipped with a logged warning (QQP's training file has a few), as the ``datasets`` GLUE loader does.
Rows with more fields than the header (a stray tab) are skipped with a warning too, since their
cells may not be in the header's columns. Every other problem is a :class:`DataError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.data._io import (
    Table,
    class_ids,
    read_first_line,
    read_table,
    regression_values,
    snippet,
)
from tunescope.data.examples import Examples
from tunescope.errors import DataError, MissingExtraError

if TYPE_CHECKING:
    from tunescope.data.task import Task

__all__ = ["GlueSource", "GLUE_HUB_ID", "SUPERGLUE_HUB_ID", "hub_offline"]

logger = logging.getLogger(__name__)

GLUE_HUB_ID = "nyu-mll/glue"
SUPERGLUE_HUB_ID = "aps/super_glue"
_STANDARD_FILES: Mapping[str, str] = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_SUPERGLUE_FILES: Mapping[str, str] = {
    "train": "train.jsonl",
    "validation": "val.jsonl",
    "test": "test.jsonl",
}
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` asks for offline mode."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in names)


def _fold(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


@dataclass(frozen=True)
class GlueSource:
    """Where one GLUE/SuperGLUE task's splits live, locally and on the hub.

    Attributes:
        hub_id: ``nyu-mll/glue`` or ``aps/super_glue``.
        config: the hub configuration (``cola``, ``mnli``, ``boolq``, ...).
        folder: the task folder in a local copy (``CoLA``, ``SST-2``, ``BoolQ``, ...).
        files: split name -> file name in that folder.
        columns: the local file's column(s) holding the text field(s), in ``Task.text_fields`` order.
        label_column: the local file's label column.
        headerless: column names for files without a header row (CoLA train/dev).
    """

    hub_id: str
    config: str
    folder: str
    files: Mapping[str, str] = field(default_factory=lambda: dict(_STANDARD_FILES))
    columns: tuple[str, ...] = ("sentence1", "sentence2")
    label_column: str = "label"
    headerless: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names, in file order."""
        return tuple(self.files)

    def load(self, task: Task, split: str, *, data_dir: Path | None, limit: int | None) -> Examples:
        """Load from ``data_dir`` when given, else through ``datasets`` (``glue`` extra, network)."""
        if data_dir is not None:
            return self._load_local(task, split, data_dir, limit)
        return self._load_hub(task, split, limit)

    # -- local files --------------------------------------------------------------------------------

    def task_folder(self, data_dir: Path) -> Path:
        """The task's folder under ``data_dir`` (case and punctuation ignored), or ``data_dir`` itself.

        Raises:
            DataError: no such folder; the message lists what is there.
        """
        if data_dir.exists() and not data_dir.is_dir():
            raise DataError(
                f"{data_dir} is a file, not a folder; pass --data-dir (data_dir=) the folder that holds "
                f"{self.folder}/{self.files['train']}"
            )
        if not data_dir.is_dir():
            raise DataError(
                f"data folder not found: {data_dir}; pass --data-dir (data_dir=) pointing at your GLUE folder"
            )
        want = _fold(self.folder)
        if _fold(data_dir.name) == want:
            return data_dir
        children = _listing(data_dir)
        for child in children:
            if child.is_dir() and _fold(child.name) == want:
                return child
        there = ", ".join(p.name for p in children if p.is_dir()) or "(no folders)"
        raise DataError(
            f"no {self.folder} folder in {data_dir} (folders there: {there}); pass --data-dir (data_dir=) "
            f"the folder that holds {self.folder}/{self.files['train']}"
        )

    def _load_local(self, task: Task, split: str, data_dir: Path, limit: int | None) -> Examples:
        folder = self.task_folder(data_dir)
        path = folder / self.files[split]
        if not path.is_file():
            there = ", ".join(p.name for p in _listing(folder)) or "(empty)"
            raise DataError(
                f"{folder} has no {path.name} for split {split!r} (files there: {there}); put the "
                f"{self.folder} files of the official download there, or pick a split that is there"
            )
        if path.suffix == ".tsv":
            first = read_first_line(path).split("\t")
            names = self.headerless if self.headerless and self.columns[0] not in first else None
            table = read_table(path, "tsv", quotes=False, names=names, wide_rows="keep")
        else:
            table = read_table(path, "jsonl")
        for k, column in enumerate(self.columns):
            role = "second text column" if k else "text column"
            hint = f"task {task.name!r} is a pair task and needs it" if k else ""
            table.require(column, role=role, hint=hint)
        has_labels = self.label_column in table.columns
        if not has_labels and not split.startswith("test"):
            table.require(self.label_column, role="label column")
        rows = _complete_rows(table, self.columns, self.label_column if has_labels else None)
        if limit is not None:
            rows = rows[:limit]
        texts = [[str(table.rows[i][c]) for i in rows] for c in self.columns]
        labels = None
        if has_labels:
            values = [table.rows[i].get(self.label_column) for i in rows]
            lines = [table.lines[i] for i in rows]
            if task.label_names is None:
                labels = regression_values(values, lines, table.source)
            else:
                labels = class_ids(values, task.label_names, lines, table.source)
        return _examples(task, split, texts, labels)

    # -- hub ------------------------------------------------------------------------------------------

    def _load_hub(self, task: Task, split: str, limit: int | None) -> Examples:
        fix = (
            f"download it once and pass --data-dir DIR (data_dir=DIR), with DIR/{self.folder}/"
            f"{self.files[split]}"
        )
        if hub_offline():
            raise DataError(
                f"task {task.name!r} is not builtin and the hub is offline (HF_HUB_OFFLINE=1); {fix}"
            )
        try:
            import datasets
        except ImportError as exc:
            raise MissingExtraError(
                "datasets", "glue", f"loading task {task.name!r} without --data-dir"
            ) from exc
        try:
            dataset: Any = datasets.load_dataset(self.hub_id, self.config, split=split)
        except Exception as exc:  # network, missing data set, hub errors: all end the same way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(f"could not load {self.hub_id}/{self.config} ({reason}); {fix}") from exc
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return examples_from_hub(dataset, task, split)


def examples_from_hub(dataset: Any, task: Task, split: str) -> Examples:
    """Convert a ``datasets.Dataset`` of a GLUE/SuperGLUE task into :class:`Examples`.

    Hub test splits carry label ``-1``; they load with ``labels=None``. Class ids are remapped by name
    when the hub's label order differs from the task's.
    """
    missing = [c for c in (*task.text_fields, "label") if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"hub data for {task.name!r} lacks column(s) {', '.join(missing)}; columns there: "
            f"{', '.join(dataset.column_names)}; pass --data-dir with a local copy instead"
        )
    texts = [[str(t) for t in dataset[c]] for c in task.text_fields]
    raw = np.asarray(dataset["label"])
    labels: np.ndarray | None
    if raw.size and np.all(raw == -1):
        labels = None
    elif task.label_names is None:
        labels = raw.astype(np.float64)
    else:
        features = getattr(dataset, "features", None)
        hub_names = getattr(features["label"], "names", None) if features is not None else None
        ids = raw.astype(np.int64)
        if hub_names and tuple(hub_names) != task.label_names:
            order = {name: i for i, name in enumerate(task.label_names)}
            try:
                remap = np.array([order[name] for name in hub_names], dtype=np.int64)
            except KeyError as exc:
                raise DataError(
                    f"hub labels {hub_names} of {task.name!r} do not match {task.label_names}; "
                    "pass --data-dir with a local copy instead"
                ) from exc
            ids = remap[ids]
        labels = ids
    return _examples(task, split, texts, labels)


def _listing(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; DataError when it cannot be listed (permissions)."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"cannot list the folder {folder} ({reason}); check its permissions") from exc


def _complete_rows(table: Table, columns: tuple[str, ...], label: str | None) -> list[int]:
    """Indices of the rows to use; rows cut short, blank or wider than the header are logged and skipped.

    A row is skipped when a text cell is missing or blank, when its label cell is missing (the row is
    shorter than the header), or when it has more fields than the header (a stray tab: its cells may
    not be in the header's columns). One warning per kind names the count and the first line.
    """
    keep: list[int] = []
    short: list[int] = []
    wide: list[int] = []
    n_columns = len(table.columns)
    for i, row in enumerate(table.rows):
        if table.widths is not None and table.widths[i] > n_columns:
            wide.append(i)
        elif all(isinstance(row.get(c), str) and str(row.get(c)).strip() for c in columns) and (
            label is None or row.get(label) is not None
        ):
            keep.append(i)
        else:
            short.append(i)
    if short:
        logger.warning(
            "%s: skipped %d row(s) with a missing or blank text or a missing label (first at line %d: %s)",
            table.source,
            len(short),
            table.lines[short[0]],
            snippet(table.rows[short[0]]),
        )
    if wide and table.widths is not None:
        logger.warning(
            "%s: skipped %d row(s) with more fields than the header (first at line %d: %d fields, the "
            "header has %d)",
            table.source,
            len(wide),
            table.lines[wide[0]],
            table.widths[wide[0]],
            n_columns,
        )
    if not keep:
        raise DataError(
            f"{table.source} has no row with all of {', '.join(columns)} filled in; check that it is the "
            "official tab-separated file"
        )
    return keep


def _examples(task: Task, split: str, texts: list[list[str]], labels: np.ndarray | None) -> Examples:
    """One split's Examples from its text columns (one or two) and labels."""
    return Examples(
        texts=texts[0],
        text_pairs=texts[1] if len(texts) > 1 else None,
        labels=labels,
        task=task.name,
        split=split,
        label_names=task.label_names,
        domain=task.domain,
    )
