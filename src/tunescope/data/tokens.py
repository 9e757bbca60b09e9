"""``TokenExamples``: sentences as words with one tag per word (POS, dependency labels, ...).

Token-level probing and token-classification fine-tuning both read this type. Readers that produce it
(CoNLL-U treebanks, spaCy silver labels) live beside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from tunescope.errors import DataError

__all__ = ["TokenExamples"]


@dataclass(frozen=True, eq=False)
class TokenExamples:
    """Sentences split into words, with one tag id per word.

    Attributes:
        words: ``n_sentences`` lists of words.
        tags: ``n_sentences`` lists of tag ids (ints in ``0..len(tag_names)-1``), aligned with ``words``.
        tag_names: tag names in id order.
        task: where the tags come from, e.g. ``"upos"`` or ``"silver-pos"``.
        split: ``train``, ``validation``, ``test``, ... or ``file``.
        silver: True when the tags are predicted by a tagger (spaCy), not gold annotations.

    Example:
        >>> tags = ("DET", "NOUN", "VERB")
        >>> ex = TokenExamples([["a", "cat"], ["runs"]], [[0, 1], [2]], tags, "upos", "train")
        >>> len(ex), ex.n_words, ex.texts
        (2, 3, ['a cat', 'runs'])
    """

    words: list[list[str]]
    tags: list[list[int]]
    tag_names: tuple[str, ...]
    task: str
    split: str
    silver: bool = field(default=False)

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise DataError(f"{self.task}: {len(self.words)} sentences but {len(self.tags)} tag lists")
        for i, (words, tags) in enumerate(zip(self.words, self.tags, strict=True)):
            if len(words) != len(tags):
                raise DataError(
                    f"{self.task}: sentence {i} has {len(words)} words but {len(tags)} tags; "
                    "give exactly one tag per word"
                )
            bad = [t for t in tags if not 0 <= int(t) < len(self.tag_names)]
            if bad:
                raise DataError(
                    f"{self.task}: sentence {i} has tag ids {bad} outside 0..{len(self.tag_names) - 1}"
                )
        object.__setattr__(self, "tag_names", tuple(self.tag_names))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def n_words(self) -> int:
        """Total number of words (rows of a token-level representation)."""
        return sum(len(w) for w in self.words)

    @property
    def texts(self) -> list[str]:
        """Each sentence's words joined by spaces."""
        return [" ".join(w) for w in self.words]

    def subset(self, indices: Sequence[int]) -> TokenExamples:
        """The sentences at ``indices``, in that order."""
        return TokenExamples(
            [self.words[i] for i in indices],
            [self.tags[i] for i in indices],
            self.tag_names,
            self.task,
            self.split,
            self.silver,
        )

    def head(self, n: int) -> TokenExamples:
        """The first ``n`` sentences."""
        return self.subset(range(min(n, len(self))))

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 over words, tags and tag names (stable across runs and machines)."""
        payload = json.dumps([self.words, self.tags, list(self.tag_names)], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()
