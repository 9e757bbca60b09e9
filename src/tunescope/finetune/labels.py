"""What the task and the data say: the examples to train and validate on, their labels and metrics.

All of it is checked before the model is loaded: at least 2 examples per split, labels that fit the
task, at least as many training examples as classes, and at least two classes among them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunescope.data.examples import Examples
from tunescope.data.task import Task
from tunescope.data.tokens import TokenExamples
from tunescope.errors import DataError, InputError
from tunescope.inference import data_kind

if TYPE_CHECKING:
    from tunescope.inference import HeadKind


@dataclass(frozen=True)
class _Labels:
    """The label side of the job: head kind, classes or regression, metrics."""

    kind: HeadKind
    regression: bool
    names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    task_name: str

    @property
    def num_labels(self) -> int:
        return 1 if self.names is None else len(self.names)

    @property
    def problem_type(self) -> str | None:
        if self.kind == "token":
            return None
        return "regression" if self.regression else "single_label_classification"


def _resolve_task(task: Task | str | None) -> Task | None:
    if task is None or isinstance(task, Task):
        return task
    from tunescope.data import get_task

    return get_task(task)


def _validation_split(task: Task) -> str | None:
    for split in task.splits:
        if split == "validation" or split.startswith("validation"):
            return split
    return None


def _load_data(
    task: Task | None,
    train: Examples | TokenExamples | None,
    validation: Examples | TokenExamples | None,
    data_dir: str | os.PathLike[str] | None,
    train_limit: int | None,
    validation_limit: int | None,
) -> tuple[Examples | TokenExamples, Examples | TokenExamples]:
    for name, limit in (("train_limit", train_limit), ("validation_limit", validation_limit)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InputError(f"{name} must be a whole number >= 0 or None, got {limit!r}")
    if train is None:
        if task is None:
            raise InputError("give a task (e.g. 'movie-sentiment') or train= and validation= examples")
        train = task.load("train", data_dir=data_dir, limit=train_limit)
    elif train_limit is not None:
        train = train.head(train_limit)
    if validation is None:
        split = None if task is None else _validation_split(task)
        if task is None or split is None:
            where = "no task was given" if task is None else f"task {task.name!r} has no validation split"
            raise DataError(f"{where}; pass validation= examples to evaluate on")
        validation = task.load(split, data_dir=data_dir, limit=validation_limit)
    elif validation_limit is not None:
        validation = validation.head(validation_limit)
    return train, validation


def _checked_data(
    task: Task | None,
    train: Examples | TokenExamples | None,
    validation: Examples | TokenExamples | None,
    data_dir: str | os.PathLike[str] | None,
    train_limit: int | None,
    validation_limit: int | None,
) -> tuple[Examples | TokenExamples, Examples | TokenExamples, _Labels]:
    """The training and validation examples and their labels, all checked (see the module docstring)."""
    train_ex, val_ex = _load_data(task, train, validation, data_dir, train_limit, validation_limit)
    _check_counts(task.name if task is not None else train_ex.task, train_ex, val_ex)
    labels = _labels(task, train_ex, val_ex)
    _check_classes(labels, train_ex)
    return train_ex, val_ex, labels


def _labels(
    task: Task | None, train: Examples | TokenExamples, validation: Examples | TokenExamples
) -> _Labels:
    kind = data_kind(train)
    if data_kind(validation) != kind:
        raise InputError("train and validation must both be Examples or both TokenExamples")
    task_name = task.name if task is not None else train.task
    if isinstance(train, TokenExamples):
        assert isinstance(validation, TokenExamples)
        if validation.tag_names != train.tag_names:
            raise DataError(f"{task_name}: train and validation have different tag names; use one tag set")
        tags = train.tag_names
        if task is not None and task.label_names is not None and len(task.label_names) != len(tags):
            raise DataError(
                f"task {task.name!r} has {len(task.label_names)} labels but the examples have "
                f"{len(tags)} tags; pass the matching task or task=None"
            )
        metrics = task.metrics if task is not None else ("accuracy",)
        return _Labels("token", False, tags, tuple(metrics), task_name)
    assert isinstance(validation, Examples)
    for split in (train, validation):
        if split.labels is None:
            raise DataError(f"{task_name}: the {split.split} split has no labels; fine-tuning needs them")
    assert train.labels is not None
    regression = task.label_kind == "regression" if task is not None else train.labels.dtype.kind == "f"
    names: tuple[str, ...] | None
    if task is not None:
        names = task.label_names
        metrics = task.metrics
    else:
        names = None if regression else train.label_names or _default_names(train, validation)
        metrics = ("pearson_spearman",) if regression else ("accuracy",)
    for split in (train, validation):
        assert split.labels is not None
        if regression:
            continue
        if split.labels.dtype.kind == "f":
            raise DataError(
                f"{task_name}: classification needs integer class ids, the {split.split} labels are floats"
            )
        assert names is not None
        if split.label_names is not None and len(split.label_names) != len(names):
            raise DataError(
                f"{task_name}: the {split.split} examples have {len(split.label_names)} label names, the "
                f"task has {len(names)}; load the examples of this task"
            )
        if len(split.labels) and (split.labels.min() < 0 or split.labels.max() >= len(names)):
            raise DataError(f"{task_name}: {split.split} class ids must lie in 0..{len(names) - 1}")
    return _Labels("sequence", regression, names, tuple(metrics), task_name)


def _default_names(*splits: Examples) -> tuple[str, ...]:
    top = max(int(s.labels.max()) for s in splits if s.labels is not None and len(s.labels))
    return tuple(f"LABEL_{i}" for i in range(max(top + 1, 2)))


def _check_counts(
    task_name: str, train: Examples | TokenExamples, validation: Examples | TokenExamples
) -> None:
    for split, n in (("train", len(train)), ("validation", len(validation))):
        if n < 2:
            raise DataError(
                f"{task_name}: the {split} split has {n} example(s); fine-tuning needs at least 2 per "
                "split (raise --train-limit / --validation-limit or pass more data)"
            )


def _check_classes(labels: _Labels, train: Examples | TokenExamples) -> None:
    if labels.regression:
        return
    n_train = train.n_words if isinstance(train, TokenExamples) else len(train)
    unit = "words" if isinstance(train, TokenExamples) else "examples"
    if n_train < labels.num_labels:
        raise DataError(
            f"{labels.task_name}: {n_train} training {unit} for {labels.num_labels} classes; "
            "give at least one per class (raise --train-limit or pass more data)"
        )
    if isinstance(train, TokenExamples):
        seen = {int(t) for tags in train.tags for t in tags}
    else:
        assert train.labels is not None
        seen = {int(v) for v in train.labels.tolist()}
    if len(seen) == 1:  # trains to a constant and scores "accuracy 1.0" on a split like it
        (only,) = seen
        name = labels.names[only] if labels.names is not None and 0 <= only < len(labels.names) else only
        what, model = ("tag", "tagger") if isinstance(train, TokenExamples) else ("class", "classifier")
        raise DataError(
            f"the training split of {labels.task_name} has only one {what} ({name!r}, all {n_train} "
            f"{unit}); a {model} needs at least two: check the labels of the data (a --train-limit that "
            "keeps the start of a file sorted by label keeps one class)"
        )
