"""``Task``: what a task is (text fields, label kind, metric) and where its data comes from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, get_args

from tunescope.data.examples import Examples
from tunescope.errors import DataError, InputError, UnknownNameError

__all__ = ["Task", "DataSource", "LabelKind", "Metric", "METRICS", "resolve_split"]

LabelKind = Literal["classification", "regression"]
Metric = Literal["accuracy", "f1", "mcc", "pearson_spearman"]
#: Primary metric names a task may declare.
METRICS: tuple[str, ...] = get_args(Metric)

PathLike = str | os.PathLike[str]

_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation", "eval": "validation"}


class DataSource(Protocol):
    """Where the examples of a task come from (builtin files, a GLUE folder, the hub, ...)."""

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the splits this source can load."""
        ...

    def load(self, task: Task, split: str, *, data_dir: Path | None, limit: int | None) -> Examples:
        """Load one split of ``task``.

        ``split`` is already one of :attr:`splits`. ``limit`` is a hint: a source may stop reading after
        ``limit`` examples; :meth:`Task.load` cuts the result to ``limit`` in any case.
        """
        ...


def resolve_split(split: str, splits: tuple[str, ...], task: str) -> str:
    """Map ``split`` (``dev`` and ``val`` are accepted for ``validation``) onto one of ``splits``.

    Raises:
        UnknownNameError: the split does not exist for this task.

    Example:
        >>> resolve_split("dev_matched", ("train", "validation_matched"), "mnli")
        'validation_matched'
    """
    name = split.strip().lower()
    head, sep, tail = name.partition("_")
    name = _SPLIT_ALIASES.get(head, head) + sep + tail
    if name not in splits:
        raise UnknownNameError(f"split of task {task!r}", split, splits)
    return name


@dataclass(frozen=True)
class Task:
    """A supervised text task: which text fields, which labels, which metric, where the data is.

    Attributes:
        name: registry name, e.g. ``movie-sentiment`` or ``mnli``.
        text_fields: names of the text field(s): one, or two for pair tasks.
        label_kind: ``classification`` (class ids) or ``regression`` (float targets).
        metric: primary metric name: ``accuracy``, ``f1``, ``mcc`` or ``pearson_spearman``.
        label_names: class names in id order (``None`` for regression).
        description: one line on what the task is and where it comes from.
        source: the loader of its splits (``None`` for a task that only describes data).
        domain: text domain of the builtin tasks (``movie``, ``amazon``, ``nyt``, ``tweet``, ``news``).
        extra_metrics: further metrics worth reporting (MRPC and QQP: ``accuracy`` after ``f1``).

    Example:
        >>> from tunescope.data import get_task
        >>> task = get_task("movie-sentiment")
        >>> task.num_labels, task.is_pair, task.splits
        (2, False, ('train', 'validation', 'test'))
        >>> task.load("validation", limit=3).labels.shape
        (3,)
    """

    name: str
    text_fields: tuple[str, ...]
    label_kind: LabelKind
    metric: str
    label_names: tuple[str, ...] | None
    description: str
    source: DataSource | None = field(default=None, repr=False, compare=False)
    domain: str = ""
    extra_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.text_fields) not in (1, 2):
            raise InputError(
                f"task {self.name!r}: text_fields must hold 1 or 2 names, got {self.text_fields}"
            )
        if self.label_kind not in get_args(LabelKind):
            raise UnknownNameError("label kind", self.label_kind, get_args(LabelKind))
        for metric in (self.metric, *self.extra_metrics):
            if metric not in METRICS:
                raise UnknownNameError("metric", metric, METRICS)
        if self.label_kind == "regression" and self.label_names is not None:
            raise InputError(f"task {self.name!r}: a regression task has no label_names; pass None")
        if self.label_kind == "classification":
            if not self.label_names or len(set(self.label_names)) != len(self.label_names):
                raise InputError(f"task {self.name!r}: classification needs distinct label_names")

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression): the size of a classifier head's output."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether each example has two texts (premise/hypothesis, question/passage, ...)."""
        return len(self.text_fields) == 2

    @property
    def metrics(self) -> tuple[str, ...]:
        """The primary metric followed by :attr:`extra_metrics`."""
        return (self.metric, *self.extra_metrics)

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names :meth:`load` accepts (``dev``/``val`` also work for ``validation``)."""
        return () if self.source is None else self.source.splits

    def load(
        self, split: str = "train", *, data_dir: PathLike | None = None, limit: int | None = None
    ) -> Examples:
        """Load one split.

        Args:
            split: one of :attr:`splits`.
            data_dir: folder with local copies (GLUE layout: ``data_dir/RTE/train.tsv``); builtin tasks
                ignore it.
            limit: keep only the first ``limit`` examples of the split (deterministic; builtin splits are
                already in a fixed shuffled order, so a prefix is a fair sample).

        Returns:
            The split's :class:`Examples`.

        Raises:
            UnknownNameError: unknown split.
            DataError: the data cannot be found or read; the message says how to fix it.
        """
        if self.source is None:
            raise DataError(
                f"task {self.name!r} has no data of its own; give a file with --data FILE "
                "(tunescope.data.load_file in Python)"
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InputError(f"limit must be a whole number >= 0 or None, got {limit!r}")
        name = resolve_split(split, self.splits, self.name)
        folder = None if data_dir is None else Path(data_dir).expanduser()
        examples = self.source.load(self, name, data_dir=folder, limit=limit)
        return examples if limit is None else examples.head(limit)
