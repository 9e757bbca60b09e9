"""Running task models on examples: tokenising, batching, predicting, and :func:`evaluate`.

:func:`evaluate` runs a classifier or regressor (``AutoModelForSequenceClassification``) over
:class:`~tunescope.data.Examples`, or a tagger (``AutoModelForTokenClassification``) over
:class:`~tunescope.data.tokens.TokenExamples`, scoring one prediction per word (its first sub-token)
with the metrics of :mod:`tunescope.metrics`. The tokenisation and batching helpers here are shared with
:mod:`tunescope.finetune`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from tunescope._progress import track
from tunescope.data.examples import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.errors import DataError, InputError
from tunescope.metrics import _CLASS_METRICS, _metric, score

if TYPE_CHECKING:
    from tunescope.data.task import Task
    from tunescope.intervals import Interval
    from tunescope.models import Encoder

__all__ = ["Predictions", "evaluate", "predictions"]

HeadKind = Literal["sequence", "token"]
"""``sequence``: one output per example (classification or regression); ``token``: one per token."""

IGNORE_INDEX = -100
"""Label of sub-tokens and special tokens that carry no word label (PyTorch's cross-entropy default)."""

_NO_HEAD = "needs a classifier head; load it with load_classifier or fine-tune first"


# ------------------------------------------------------------------------------------------------
# inputs: tokenised features and batches (shared with tunescope.finetune)
# ------------------------------------------------------------------------------------------------
def head_kind(model: torch.nn.Module) -> HeadKind | None:
    """Which task head ``model`` has: ``sequence``, ``token`` or ``None`` (a base model).

    Looks through a peft wrapper; decided by the transformers class name
    (``...ForSequenceClassification`` / ``...ForTokenClassification``).
    """
    get_base_model = getattr(model, "get_base_model", None)
    inner = get_base_model() if callable(get_base_model) else model
    name = type(inner).__name__
    if name.endswith("ForSequenceClassification"):
        return "sequence"
    if name.endswith("ForTokenClassification"):
        return "token"
    return None


def data_kind(examples: Examples | TokenExamples) -> HeadKind:
    """``token`` for :class:`TokenExamples`, ``sequence`` for :class:`Examples`."""
    if isinstance(examples, TokenExamples):
        return "token"
    if isinstance(examples, Examples):
        return "sequence"
    raise InputError(
        f"expected tunescope Examples or TokenExamples, got {type(examples).__name__}; "
        "build them with Task.load, load_file or tunescope.data.tokens"
    )


def max_length_for(tokenizer: Any, config: Any, max_length: int) -> int:
    """``max_length`` capped by the tokenizer's and the position table's limits."""
    if max_length < 2:
        raise InputError(f"max_length must be at least 2, got {max_length}")
    limit = int(min(getattr(tokenizer, "model_max_length", 512) or 512, 10**6))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style position ids start after the padding index
        offset = (
            (config.pad_token_id or 0) + 1 if config.model_type in {"roberta", "xlm-roberta", "mpnet"} else 0
        )
        limit = min(limit, int(positions) - offset)
    return min(limit, max_length)


_FEATURES: OrderedDict[tuple[str, str, int], list[dict[str, Any]]] = OrderedDict()
_FEATURES_KEPT = 8  # tokenised example sets kept in memory (a run's splits and experiment subsets)
_VOCABULARIES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _tokenizer_digest(tokenizer: Any) -> str:
    """A hash of what a tokenizer gives a model: its definition, and which inputs it returns.

    The definition is the fast tokenizer's ``tokenizer.json`` (else its class and vocabulary), hashed
    once per tokenizer object. The settings kept in Python are read on every call, since models that
    share one vocabulary differ in them: DistilBERT and MPNet load BERT's vocabulary without
    ``token_type_ids`` in ``model_input_names``, and their forward does not accept that input.
    """
    settings = [
        type(tokenizer).__name__,
        list(getattr(tokenizer, "model_input_names", ()) or ()),
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
    ]
    return hashlib.sha256(json.dumps([_definition_digest(tokenizer), settings]).encode()).hexdigest()


def _definition_digest(tokenizer: Any) -> str:
    try:
        return _VOCABULARIES[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    digest = hashlib.sha256(text.encode()).hexdigest()
    with contextlib.suppress(TypeError):
        _VOCABULARIES[tokenizer] = digest
    return digest


def _examples_digest(examples: Examples | TokenExamples) -> str:
    h = hashlib.sha256()
    if isinstance(examples, TokenExamples):
        h.update(json.dumps([examples.words, [list(map(int, t)) for t in examples.tags]]).encode())
    else:
        labels = None if examples.labels is None else examples.labels.tolist()
        h.update(
            json.dumps(
                [list(examples.texts), examples.text_pairs and list(examples.text_pairs), labels]
            ).encode()
        )
    return h.hexdigest()


def features(tokenizer: Any, examples: Examples | TokenExamples, max_length: int) -> list[dict[str, Any]]:
    """Tokenise examples into one dict per example (``input_ids``, ... and ``labels``), once per process.

    Sentence examples: one label per example (an int class id, or a float for regression; pairs are
    tokenised together). Token examples: ``labels`` per token, the word's tag on its first sub-token
    and ``-100`` (ignored by the loss and the metrics) on the other sub-tokens and special tokens;
    words cut off by ``max_length`` are not scored.

    The rows are kept for the same tokenizer (by its definition, so two loads of one tokenizer share
    them), examples and ``max_length``: the fine-tuning experiments of one run tokenise their data once.
    Treat them as read-only.

    Raises:
        DataError: The examples have no labels.
        InputError: Token examples with a slow (Python) tokenizer, which has no ``word_ids``.

    """
    key = (_tokenizer_digest(tokenizer), _examples_digest(examples), max_length)
    if key in _FEATURES:
        _FEATURES.move_to_end(key)
        return list(_FEATURES[key])
    rows = _tokenise(tokenizer, examples, max_length)
    _FEATURES[key] = rows
    while len(_FEATURES) > _FEATURES_KEPT:
        _FEATURES.popitem(last=False)
    return list(rows)


def _tokenise(tokenizer: Any, examples: Examples | TokenExamples, max_length: int) -> list[dict[str, Any]]:
    """:func:`features` without the cache."""
    if isinstance(examples, TokenExamples):
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(
                "token classification needs a fast tokenizer (word_ids); load the model's tokenizer.json"
            )
        enc = tokenizer(examples.words, is_split_into_words=True, truncation=True, max_length=max_length)
        rows = []
        for i, tags in enumerate(examples.tags):
            aligned: list[int] = []
            previous = None
            for word in enc.word_ids(i):
                aligned.append(IGNORE_INDEX if word is None or word == previous else int(tags[word]))
                previous = word
            rows.append({**{k: v[i] for k, v in enc.items()}, "labels": aligned})
        return rows
    if examples.labels is None:
        raise DataError(
            f"{examples.task} ({examples.split}) has no labels; fine-tuning and evaluation need them"
        )
    enc = tokenizer(examples.texts, examples.text_pairs, truncation=True, max_length=max_length)
    regression = examples.labels.dtype.kind == "f"
    targets: list[float] | list[int] = (
        [float(y) for y in examples.labels] if regression else [int(y) for y in examples.labels]
    )
    return [{**{k: v[i] for k, v in enc.items()}, "labels": targets[i]} for i in range(len(examples))]


def collator(tokenizer: Any, kind: HeadKind) -> Callable[[list[dict[str, Any]]], Any]:
    """transformers' dynamic-padding collator for the head kind (token labels padded with -100)."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if kind == "token":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)
    return DataCollatorWithPadding(tokenizer)


def length_batches(rows: Sequence[dict[str, Any]], batch_size: int) -> Iterator[list[int]]:
    """Index batches of examples sorted by length (longest first), so each batch pads little."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


BatchItems = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One batch's ``(predictions, gold labels, row index of each item)``, as :func:`batch_items` gives them."""


def batch_items(
    logits: torch.Tensor, labels: torch.Tensor, idx: Sequence[int], *, kind: HeadKind, regression: bool
) -> BatchItems:
    """What one batch's ``logits`` predict, as in :func:`predict`, with the gold labels and owning rows.

    Args:
        logits: The head's output, ``(batch, n_labels)`` or ``(batch, seq_len, n_labels)`` for a tagger.
        labels: The collated labels ``(batch,)`` or ``(batch, seq_len)``.
        idx: The row index of each example in the batch.
        kind, regression: The head kind and whether the labels are regression targets.
    """
    logits = logits.float().cpu()
    if kind == "token":
        keep = labels != IGNORE_INDEX
        owners = np.broadcast_to(np.asarray(idx)[:, None], keep.shape)[keep.numpy()]
        return logits.argmax(-1)[keep].numpy(), labels[keep].numpy(), owners
    if regression:
        return logits[:, 0].numpy(), labels.float().numpy(), np.asarray(idx)
    return logits.argmax(-1).numpy(), labels.numpy(), np.asarray(idx)


def in_row_order(parts: Sequence[BatchItems]) -> BatchItems:
    """The batches' items concatenated and put back in the rows' order (words in order within a row)."""
    owner = np.concatenate([p[2] for p in parts])
    order = np.argsort(owner, kind="stable")
    return (
        np.concatenate([p[0] for p in parts])[order],
        np.concatenate([p[1] for p in parts])[order],
        owner[order],
    )


def predict(
    model: torch.nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    *,
    kind: HeadKind,
    regression: bool,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    with_groups: bool = False,
) -> Any:
    """Predictions and gold labels, as two aligned 1-D arrays (one entry per scored example or word).

    The entries follow the order of ``rows`` (words in order within each example), although the
    batches run longest first. With ``with_groups``, a third array gives each entry's row index (the
    example a word belongs to), for resampling whole examples.

    Sequence heads give ``logits`` ``(batch, n_labels)``: class = argmax, or ``logits[:, 0]`` for
    regression. Token heads give ``(batch, seq_len, n_labels)``; only positions whose label is not
    ``-100`` (first sub-tokens of words) are kept. The model is put in eval mode and its previous
    mode restored.
    """
    was_training = model.training
    model.eval()
    parts: list[BatchItems] = []
    batches = list(length_batches(rows, batch_size))
    try:
        with torch.inference_mode():
            for idx in track(batches, total=len(batches), description="evaluating", enabled=progress):
                batch = collate([rows[i] for i in idx])
                labels = batch.pop("labels")
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
                parts.append(batch_items(logits, labels, idx, kind=kind, regression=regression))
    finally:
        model.train(was_training)
    pred, gold, owner = in_row_order(parts)
    return (pred, gold, owner) if with_groups else (pred, gold)


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
def _metric_names(
    metric: str | Sequence[str] | None, task: Task | None, examples: Examples | TokenExamples
) -> list[str]:
    if metric is not None:
        names = [metric] if isinstance(metric, str) else list(metric)
    elif task is not None:
        names = list(task.metrics)
    elif isinstance(examples, Examples) and examples.labels is not None and examples.labels.dtype.kind == "f":
        names = ["pearson_spearman"]
    else:
        names = ["accuracy"]
    for name in names:
        _metric(name)
    return names


def check_head(
    num_labels: int,
    problem_type: str | None,
    *,
    regression: bool,
    n_classes: int | None,
    what: str,
    fix: str,
) -> None:
    """Refuse a head that cannot score these labels (regression vs classes, number of outputs).

    Args:
        num_labels: The head's outputs (``config.num_labels``).
        problem_type: The config's ``problem_type`` (``None``: inferred by transformers).
        regression: Whether the labels are regression targets.
        n_classes: Number of classes of the labels (``None`` when unknown or regression).
        what: How to name the model in the message.
        fix: What the user can do, appended to the message.
    """
    if regression:
        if num_labels != 1 or problem_type not in (None, "regression"):
            raise InputError(
                f"{what} has a {num_labels}-way classification head but the task is a regression "
                f"(one output needed); {fix}"
            )
        return
    if problem_type == "regression" or num_labels == 1:
        raise InputError(
            f"{what} has a regression head (1 output) but the task has "
            f"{n_classes or 'several'} classes; {fix}"
        )
    if n_classes is not None and num_labels != n_classes:
        raise InputError(
            f"{what} has a {num_labels}-way classifier head but the task has {n_classes} labels; {fix}"
        )


def _check_fits(
    encoder: Encoder, examples: Examples | TokenExamples, names: Sequence[str]
) -> tuple[HeadKind, bool]:
    """Refuse a model whose head cannot score ``examples`` with ``names``; return (kind, regression)."""
    kind = data_kind(examples)
    have = head_kind(encoder.model)
    if have is None:
        raise InputError(f"evaluating {encoder.name} {_NO_HEAD}")
    if have != kind:
        wanted = "token-classification" if kind == "token" else "sequence-classification"
        raise InputError(
            f"{encoder.name} has a {have}-level head but these examples need a {wanted} head; "
            "fine-tune one for this task"
        )
    config: Any = encoder.model.config
    if isinstance(examples, TokenExamples):
        regression: bool = False
        n_classes: int | None = len(examples.tag_names)
    else:
        regression = examples.labels is not None and examples.labels.dtype.kind == "f"
        n_classes = None if regression or examples.label_names is None else len(examples.label_names)
    check_head(
        int(config.num_labels),
        getattr(config, "problem_type", None),
        regression=regression,
        n_classes=n_classes,
        what=encoder.name,
        fix="evaluate a model fine-tuned for this task",
    )
    if regression and any(n in _CLASS_METRICS for n in names):
        raise InputError(f"metrics {sorted(_CLASS_METRICS)} need class labels; use pearson or spearman")
    return kind, regression


def evaluate(
    encoder: Encoder,
    examples: Examples | TokenExamples,
    *,
    metric: str | Sequence[str] | None = None,
    task: Task | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Run a task model over labelled examples and score it.

    Sentence examples need a sequence classifier/regressor (``AutoModelForSequenceClassification``;
    pairs are encoded together, ``[CLS] a [SEP] b [SEP]``); :class:`TokenExamples` need a token
    classifier (``AutoModelForTokenClassification``), scored over words: each word's prediction is
    its first sub-token's.

    Args:
        encoder: An :class:`~tunescope.models.Encoder` wrapping a task model (e.g. from
            :func:`tunescope.load_classifier` or a folder written by :func:`tunescope.finetune`).
        examples: Labelled examples.
        metric: A metric name (or several); default: the task's metrics, else ``pearson_spearman`` for
            float labels and ``accuracy`` otherwise.
        task: The task whose metrics to use when ``metric`` is ``None``.
        batch_size: Examples per forward pass (batches are length-sorted).
        max_length: Truncate inputs to this many tokens.
        device: Move the model here first (default: where it is).
        progress: Show a progress bar on stderr.

    Returns:
        ``{metric: value, ..., "n": number of scored examples or words}``;
        ``pearson_spearman`` comes with ``pearson`` and ``spearman``.

    Raises:
        InputError: The model has no (suitable) task head, or the head does not fit the labels.
        DataError: The examples have no labels.
        UnknownNameError: Unknown metric.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> labels = np.array([1, 0, 1])
        >>> ex = Examples(["good", "bad", "fine"], None, labels, "demo", "validation", ("neg", "pos"))
        >>> sorted(evaluate(tiny_model("bert", task="classifier"), ex))
        ['accuracy', 'n']
    """
    names = _metric_names(metric, task, examples)
    _check_fits(encoder, examples, names)
    found = predictions(
        encoder, examples, batch_size=batch_size, max_length=max_length, device=device, progress=progress
    )
    return score(names, found.predictions, found.labels)


@dataclass(frozen=True)
class Predictions:
    """What a task model predicted for labelled examples, aligned with the gold labels.

    Attributes:
        predictions: Class ids (or values, for regression) ``(n_items,)``: one per example, or one per
            word for a tagger, in the examples' order.
        labels: Gold labels ``(n_items,)``.
        groups: The example each item belongs to ``(n_items,)`` (``0..n_examples-1``); intervals
            resample whole examples, so the words of one sentence count as one unit of evidence.
    """

    predictions: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def score(self, metric: str) -> float:
        """The metric on all items."""
        from tunescope.metrics import compute_metric

        return compute_metric(metric, self.predictions, self.labels)

    def interval(self, metric: str, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
        """The metric with its bootstrap interval over examples (see :mod:`tunescope.intervals`)."""
        from tunescope.intervals import metric_interval

        return metric_interval(
            metric,
            self.predictions,
            self.labels,
            groups=self._groups(),
            n_boot=n_boot,
            level=level,
            seed=seed,
        )

    def difference(
        self, other: Predictions, metric: str, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
    ) -> Interval:
        """``metric(other) - metric(self)`` with its paired bootstrap interval.

        See :func:`tunescope.intervals.difference_interval`.

        Raises:
            MeasureError: ``other`` scored different items or labels.
        """
        from tunescope.errors import MeasureError
        from tunescope.intervals import difference_interval

        if self.labels.shape != other.labels.shape or not np.array_equal(self.labels, other.labels):
            raise MeasureError(
                "the two models were scored on different examples; a paired difference needs the same"
            )
        return difference_interval(
            metric,
            self.predictions,
            other.predictions,
            self.labels,
            groups=self._groups(),
            n_boot=n_boot,
            level=level,
            seed=seed,
        )

    def _groups(self) -> np.ndarray | None:
        return None if self.groups.size == np.unique(self.groups).size else self.groups


def predictions(
    encoder: Encoder,
    examples: Examples | TokenExamples,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Predictions:
    """Run a task model over labelled examples and keep what it predicted (:func:`evaluate` scores them).

    Args:
        encoder, examples, batch_size, max_length, device, progress: As in :func:`evaluate`.

    Returns:
        :class:`Predictions`, in the examples' order.

    Raises:
        InputError: The model has no (suitable) task head, or the head does not fit the labels.
        DataError: The examples have no labels.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> labels = np.array([1, 0, 1])
        >>> ex = Examples(["good", "bad", "fine"], None, labels, "demo", "validation", ("neg", "pos"))
        >>> found = predictions(tiny_model("bert", task="classifier"), ex)
        >>> found.predictions.shape, found.labels.tolist(), found.groups.tolist()
        ((3,), [1, 0, 1], [0, 1, 2])
    """
    inputs = prepare(encoder, examples, batch_size=batch_size, max_length=max_length, device=device)
    pred, gold, groups = predict(
        encoder.model,
        inputs.rows,
        inputs.collate,
        kind=inputs.kind,
        regression=inputs.regression,
        batch_size=batch_size,
        device=inputs.device,
        progress=progress,
        with_groups=True,
    )
    return Predictions(pred, gold, groups)


@dataclass(frozen=True)
class Inputs:
    """Examples tokenised for a task model, as :func:`predictions` feeds them (see :func:`prepare`).

    Attributes:
        rows: One tokenised example per row (:func:`features`).
        collate: Pads a list of rows into a batch (:func:`collator`).
        kind: The model's head kind.
        regression: Whether the labels are regression targets.
        device: Where the model is (batches go there).
    """

    rows: list[dict[str, Any]]
    collate: Callable[[list[dict[str, Any]]], Any]
    kind: HeadKind
    regression: bool
    device: torch.device


def prepare(
    encoder: Encoder,
    examples: Examples | TokenExamples,
    *,
    batch_size: int,
    max_length: int,
    device: str | torch.device | None = None,
) -> Inputs:
    """Check that ``encoder``'s head fits ``examples``, move the model to ``device`` and tokenise.

    The first half of :func:`predictions`, shared with :mod:`tunescope.replay`; arguments as there.

    Raises:
        InputError: ``batch_size`` below 1, or the model has no (suitable) task head.
        DataError: The examples have no labels, or there are none.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    kind, regression = _check_fits(encoder, examples, ())
    model = encoder.model
    config: Any = model.config
    if device is not None:
        from tunescope.models.loading import resolve_device

        model.to(resolve_device(device))  # type: ignore[arg-type]
    target = next(model.parameters()).device
    rows = features(encoder.tokenizer, examples, max_length_for(encoder.tokenizer, config, max_length))
    if not rows:
        raise DataError(f"{examples.task}: no examples to evaluate")
    return Inputs(rows, collator(encoder.tokenizer, kind), kind, regression, target)
