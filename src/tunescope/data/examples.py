"""``Examples``: the texts, optional second texts and labels of one split of one task."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tunescope.errors import DataError, InputError

__all__ = ["Examples"]

_HASH_VERSION = b"tunescope.examples.v1"


@dataclass(frozen=True, eq=False)
class Examples:
    """The examples of one split: texts, optional paired texts, labels.

    Attributes:
        texts: first (or only) text of each example, ``n_examples`` of them.
        text_pairs: second text of each example for pair tasks (MNLI, MRPC, ...), else ``None``.
        labels: class ids (int64, shape ``(n_examples,)``) or regression targets (float64); ``None`` for
            unlabelled data such as GLUE test sets. Stored read-only.
        task: the task name, or the file name for a user's file.
        split: ``train``, ``validation``, ``test``, ... or ``file``.
        label_names: class names in id order; ``None`` for regression or unlabelled data.
        domain: where the texts come from (``movie``, ``amazon``, ``nyt``, ``tweet``, ``news``) or ``""``.

    Example:
        >>> ex = Examples(["good", "bad", "fine"], None, np.array([1, 0, 1]), "demo", "train", ("neg", "pos"))
        >>> len(ex), ex.head(2).texts, ex.subset([2, 0]).labels.tolist()
        (3, ['good', 'bad'], [1, 1])
        >>> ex.content_hash[:12]
        'bc6f4582c304'
    """

    texts: list[str]
    text_pairs: list[str] | None
    labels: np.ndarray | None
    task: str
    split: str
    label_names: tuple[str, ...] | None
    domain: str = field(default="")

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.text_pairs is not None and len(self.text_pairs) != n:
            raise DataError(
                f"{self.task}: {n} texts but {len(self.text_pairs)} paired texts; they must match"
            )
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.ndim != 1 or labels.shape[0] != n:
                raise DataError(f"{self.task}: labels have shape {labels.shape}, expected ({n},)")
            if labels.dtype.kind == "f":
                labels = labels.astype(np.float64, copy=True)
            elif labels.dtype.kind in "iub":
                labels = labels.astype(np.int64, copy=True)
            else:
                raise InputError(f"{self.task}: labels must be integers or floats, got dtype {labels.dtype}")
            if labels.dtype == np.int64 and self.label_names is not None and n:
                low, high = int(labels.min()), int(labels.max())
                if low < 0 or high >= len(self.label_names):
                    raise DataError(
                        f"{self.task}: class ids {low}..{high} do not fit {len(self.label_names)} label names"
                    )
            labels.setflags(write=False)
            object.__setattr__(self, "labels", labels)
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))

    def __len__(self) -> int:
        return len(self.texts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Examples):
            return NotImplemented
        return (self.task, self.split, self.domain, self.label_names) == (
            other.task,
            other.split,
            other.domain,
            other.label_names,
        ) and self.content_hash == other.content_hash

    def __hash__(self) -> int:
        return hash(self.content_hash)

    @property
    def is_pair(self) -> bool:
        """Whether each example has two texts."""
        return self.text_pairs is not None

    @cached_property
    def class_counts(self) -> dict[str, int] | None:
        """How many examples each class has, in class-id order, classes without examples included.

        Keys are the label names; without label names, the ids that occur, as strings. ``None`` for
        regression targets or unlabelled data. Loading never refuses a split with one class (extraction
        needs no labels); a stage that trains or scores per class checks :attr:`present_classes` first.

        Example:
            >>> ex = Examples(["a", "b", "c"], None, np.array([1, 1, 1]), "demo", "train", ("neg", "pos"))
            >>> ex.class_counts, ex.present_classes
            ({'neg': 0, 'pos': 3}, ('pos',))
        """
        if self.labels is None or self.labels.dtype.kind == "f":
            return None
        if self.label_names is not None:  # ids are 0..K-1 (checked in __post_init__)
            counts = np.bincount(self.labels, minlength=len(self.label_names)).tolist()
            return dict(zip(self.label_names, counts, strict=True))
        ids, counts = np.unique(self.labels, return_counts=True)
        return {str(i): int(c) for i, c in zip(ids.tolist(), counts.tolist(), strict=True)}

    @property
    def present_classes(self) -> tuple[str, ...]:
        """The classes that have at least one example, in class-id order; ``()`` without class labels.

        ``len(examples.present_classes) < 2`` is the cheap check for "this split has only one class
        (or none)", which a probe, a classifier or a per-class score cannot use.
        """
        counts = self.class_counts
        return () if counts is None else tuple(name for name, count in counts.items() if count)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """The examples at ``indices`` (ints in any order, or a boolean mask of length ``n_examples``)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise InputError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise InputError(f"subset index out of range for {len(self)} examples")
        return Examples(
            texts=[self.texts[i] for i in idx],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            task=self.task,
            split=self.split,
            label_names=self.label_names,
            domain=self.domain,
        )

    def head(self, n: int) -> Examples:
        """The first ``n`` examples (all of them when there are fewer)."""
        if n < 0:
            raise InputError(f"head(n) needs n >= 0, got {n}")
        return self.subset(np.arange(min(n, len(self))))

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the texts, paired texts, labels and label names.

        It does not depend on the Python version, the platform or the process, so caches can key on it.
        """
        h = hashlib.sha256(_HASH_VERSION)

        def add(chunk: bytes) -> None:
            h.update(len(chunk).to_bytes(8, "little"))
            h.update(chunk)

        for text in self.texts:
            add(text.encode("utf-8"))
        add(b"pairs" if self.text_pairs is not None else b"no-pairs")
        for text in self.text_pairs or ():
            add(text.encode("utf-8"))
        if self.labels is None:
            add(b"no-labels")
        else:
            kind = "<f8" if self.labels.dtype.kind == "f" else "<i8"
            add(kind.encode())
            add(np.ascontiguousarray(self.labels, dtype=kind).tobytes())
        add(b"\x1f".join(name.encode("utf-8") for name in self.label_names or ()))
        return h.hexdigest()
