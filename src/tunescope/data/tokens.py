"""``TokenExamples``: sentences as words with one tag per word (POS, dependency labels, ...).

Token-level probing and token-classification fine-tuning both read this type. Readers that produce it
(CoNLL-U treebanks, spaCy silver labels) live beside it. Both also split sentences the same way, here:
:func:`split_sentences` (seeded, whole sentences on one side, word budgets; the probes' train/test split)
and :func:`hold_out` (10% of the sentences for validation; fine-tuning a tagger without a validation file).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from tunescope.errors import DataError, InputError

__all__ = [
    "MAX_TEST_WORDS",
    "MAX_TRAIN_WORDS",
    "TEST_FRACTION",
    "TokenExamples",
    "hold_out",
    "split_sentences",
]

#: default word budget of :func:`split_sentences`' train side (a probe's fit + validation words per
#: label set): keeps the demo fast
MAX_TRAIN_WORDS = 10_000
#: default word budget of its test side
MAX_TEST_WORDS = 2_500
#: default share of the sentences that go to the test side
TEST_FRACTION = 0.2


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


# ------------------------------------------------------------------------------------------------
# splitting sentences
# ------------------------------------------------------------------------------------------------
def split_sentences(
    lengths: Sequence[int],
    *,
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
    n_test: int | None = None,
    max_train_words: int | None = MAX_TRAIN_WORDS,
    max_test_words: int | None = MAX_TEST_WORDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of sentences (whole sentences on one side), capped in words.

    The sentences are shuffled with ``seed``; the first ``ceil(test_fraction * n)`` (or ``n_test``; at
    least 1, at most ``n - 1``) go to test, the rest to train. Each side then keeps sentences in that
    shuffled order while its word count stays within its cap (a first sentence longer than the cap is
    kept, so no side is empty).

    Args:
        lengths: (n_sentences,) words per sentence; sentences without words are left out.
        seed: seed of the shuffle.
        test_fraction: share of the sentences on the test side, in (0, 1).
        n_test: number of test sentences, instead of ``test_fraction``'s share.
        max_train_words, max_test_words: word budget of each side (None = no cap).

    Returns:
        ``(train, test)``: ascending sentence indices.

    Raises:
        DataError: fewer than two sentences with words.

    Example:
        >>> train, test = split_sentences([3, 4, 5, 2, 6], seed=0)
        >>> train.tolist(), test.tolist()
        ([0, 1, 3, 4], [2])
    """
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1); got {test_fraction}")
    sizes = np.asarray(lengths, dtype=np.int64)
    usable = np.flatnonzero(sizes > 0)
    if len(usable) < 2:
        raise DataError(f"token probes need at least two sentences with words; got {len(usable)}")
    order = usable[np.random.default_rng(seed).permutation(len(usable))]
    wanted = math.ceil(test_fraction * len(order)) if n_test is None else n_test
    n_test = min(max(1, wanted), len(order) - 1)
    return _within(order[n_test:], sizes, max_train_words), _within(order[:n_test], sizes, max_test_words)


def _within(order: np.ndarray, sizes: np.ndarray, budget: int | None) -> np.ndarray:
    """The sentences of ``order`` whose running word total stays within ``budget`` (at least one)."""
    if budget is not None:
        totals = np.cumsum(sizes[order])
        order = order[: max(1, int(np.searchsorted(totals, budget, side="right")))]
    return np.sort(order)


def hold_out(
    examples: TokenExamples, *, seed: int = 0, what: str = "the data", fix: str = "more sentences"
) -> tuple[TokenExamples, TokenExamples]:
    """Split off 10% of the sentences (at least 2), chosen by ``seed``, for validation.

    The sentences are shuffled as :func:`split_sentences` shuffles them (every sentence counts, words or
    not) and the first ``max(2, n // 10)`` become the validation side, whose ``split`` is
    ``"validation"``; both sides keep the original order.

    Args:
        examples: the sentences to split.
        seed: seed of the shuffle.
        what, fix: how the error names the data and what to pass instead.

    Returns:
        ``(train, validation)``.

    Raises:
        DataError: fewer than 4 sentences (2 would be left for training).

    Example:
        >>> ex = TokenExamples([["w"]] * 20, [[0]] * 20, ("X",), "upos", "train")
        >>> train, validation = hold_out(ex, seed=0)
        >>> len(train), len(validation), validation.split
        (18, 2, 'validation')
    """
    n = len(examples)
    n_validation = max(2, n // 10)
    if n - n_validation < 2:
        raise DataError(
            f"{what} has {n} sentence(s); holding out 10% for validation needs at least 4 (pass {fix})"
        )
    kept, held = split_sentences(
        [1] * n, seed=seed, n_test=n_validation, max_train_words=None, max_test_words=None
    )
    validation = examples.subset(held.tolist())
    return examples.subset(kept.tolist()), replace(validation, split="validation")
