"""Attention-head importance, head-pruning curves and the coherence of two importance maps.

Importance follows Michel, Levy & Neubig (2019), "Are Sixteen Heads Really Better than One?": every
head's output is multiplied by a gate ``g_{l,h}`` (:class:`~tunescope.models.HeadGates`), and the
importance of head ``(l, h)`` is the magnitude of the loss gradient with respect to its gate at
``g = 1``. All ``L * H`` gates get their gradient from **one forward and one backward per batch**.

Three objectives say which loss (registry :data:`OBJECTIVES`):

- ``task``: the loss of the model's trained classifier on labelled examples (sequence or token level).
- ``mlm``: the masked-LM loss, with the checkpoint's own pre-trained MLM head where it has one, else a
  head fitted on the frozen encoder (labelled ``"mlm (fitted head)"``, see :func:`fit_mlm_head`).
- ``kl``: label-free; how far the gated model moves from the ungated one (see :data:`OBJECTIVES` for
  what exactly is differentiated and why a plain KL would not do).

:func:`prune_curve` masks the least important heads step by step and evaluates each mask;
:func:`coherence` compares two importance maps (rank correlations, top/bottom-k overlap) with
bootstrap intervals.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunescope._progress import track
from tunescope.data.examples import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.errors import CacheError, DataError, InputError, ModelLoadError, UnknownNameError
from tunescope.inference import (
    IGNORE_INDEX,
    Predictions,
    _check_fits,
    _metric_names,
    collator,
    data_kind,
    features,
    head_kind,
    length_batches,
    max_length_for,
    predictions,
)
from tunescope.intervals import check_interval_options
from tunescope.locations import location
from tunescope.metrics import score
from tunescope.models.gates import HeadGates
from tunescope.models.loading import Encoder, from_model, require_classifier, resolve_device

if TYPE_CHECKING:
    import transformers

__all__ = [
    "COHERENCE_COLUMNS",
    "HEADS_COLUMNS",
    "OBJECTIVES",
    "PRUNING_COLUMNS",
    "FittedMLMHead",
    "HeadImportance",
    "Objective",
    "coherence",
    "fit_mlm_head",
    "head_importance",
    "head_importance_batches",
    "least_important",
    "normalize_by_layer",
    "objective_label",
    "prune_curve",
]

ObjectiveName = Literal["task", "mlm", "kl"]
RankBy = Literal["task", "mlm", "kl", "random"]
Scope = Literal["global", "layer"]
AnyExamples = Examples | TokenExamples

PRUNING_COLUMNS = (
    "rank_by",
    "objective",
    "heads_pruned_fraction",
    "heads_pruned",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "n_boot",
    "pruned",
)
"""Keys of each :func:`prune_curve` row (the intervals are NaN for the ``mlm`` and ``kl`` objectives)."""

HEADS_COLUMNS = ("model", "objective", "layer", "head", "location", "importance", "normalized")
"""Keys of each :meth:`HeadImportance.rows` row (the ``heads.csv`` table)."""

COHERENCE_COLUMNS = ("map_a", "map_b", "statistic", "k", "value", "ci_low", "ci_high", "resampled", "n_boot")
"""Keys of each :func:`coherence` row."""

MASK_FRACTION = 0.15
"""Share of the non-special tokens of each example that the ``mlm`` objective masks (BERT's 15%)."""

FITTED_LABEL = "mlm (fitted head)"

_FIT_VERSION = "tunescope.heads.fitted-mlm.v1"
_MEMORY_CACHE: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
_MEMORY_CACHE_SIZE = 8


# ------------------------------------------------------------------------------------------------
# the result
# ------------------------------------------------------------------------------------------------
def normalize_by_layer(scores: Tensor) -> Tensor:
    """Divide each layer's row by its L2 norm (Michel et al. 2019, section 4.2).

    ``Î_{l,h} = I_{l,h} / sqrt(sum_h' I_{l,h'}^2)``; a row of zeros stays zero.

    Args:
        scores: ``(n_layers, n_heads)``.

    Returns:
        ``(n_layers, n_heads)``, each non-zero row of unit L2 norm.

    Example:
        >>> normalize_by_layer(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    norm = scores.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, scores / torch.where(norm > 0, norm, torch.ones_like(norm)), scores)


@dataclass(frozen=True, eq=False)
class HeadImportance:
    """Head importance with its per-batch pieces, so it can be re-aggregated over resampled batches.

    With batches ``b = 1..B``, ``T_b`` non-padding tokens in batch ``b`` (the attention mask's sum,
    special tokens included) and ``L̄_b`` the batch's mean loss, the raw importance is

    ``I_{l,h} = (sum_b |d L̄_b / d g_{l,h}|) / (sum_b T_b)``  at ``g = 1`` (or at the given mask),

    the aggregation of the Hugging Face "bertology" example. With ``batch_size=1`` it is
    ``(n / T) * E_x |d L(x) / d g_{l,h}|``: Michel et al.'s expectation over examples times the
    constant ``n_examples / n_tokens``, which the per-layer normalisation cancels.

    Attributes:
        objective: The registry name (``task``, ``mlm``, ``kl``).
        label: What was optimised, for tables: the objective name, ``"mlm (fitted head)"`` when the
            MLM head was fitted here, or ``"kl (hidden state)"`` for a model without classifier.
        batch_sums: ``(n_batches, n_layers, n_heads)`` float64, ``|d L̄_b / d g|`` of each batch.
        batch_tokens: ``(n_batches,)`` float64, ``T_b``.
        batch_indices: The example indices of each batch (batches are length-sorted).
        normalized: Whether :attr:`scores` divides each layer by its L2 norm.
    """

    objective: str
    label: str
    batch_sums: Tensor
    batch_tokens: Tensor
    batch_indices: tuple[tuple[int, ...], ...]
    normalized: bool

    @property
    def raw(self) -> Tensor:
        """``(n_layers, n_heads)`` float64: ``sum_b |d L̄_b / d g| / sum_b T_b``."""
        return self.batch_sums.sum(0) / self.batch_tokens.sum().clamp_min(1.0)

    @property
    def scores(self) -> Tensor:
        """:attr:`raw`, divided by each layer's L2 norm when :attr:`normalized`."""
        return normalize_by_layer(self.raw) if self.normalized else self.raw

    @property
    def n_batches(self) -> int:
        """Number of batches ``B``."""
        return int(self.batch_tokens.numel())

    def resampled(self, batches: Sequence[int] | Tensor) -> Tensor:
        """:attr:`scores` recomputed from the given batches (repeats allowed): a bootstrap draw."""
        idx = torch.as_tensor(batches, dtype=torch.long)
        raw = self.batch_sums[idx].sum(0) / self.batch_tokens[idx].sum().clamp_min(1.0)
        return normalize_by_layer(raw) if self.normalized else raw

    def rows(self, model: str) -> list[dict[str, Any]]:
        """One ``heads.csv`` row per head (:data:`HEADS_COLUMNS`): model, objective (:attr:`label`), layer
        (1..L), head (0..H-1), location (``layer.3.head.5``), importance (:attr:`raw`) and normalized
        (each layer's row divided by its L2 norm, whatever :attr:`normalized` says)."""
        raw = self.raw
        scaled = normalize_by_layer(raw)
        return [
            {
                "model": model,
                "objective": self.label,
                "layer": layer + 1,
                "head": head,
                "location": location(layer + 1, head=head),
                "importance": float(raw[layer, head]),
                "normalized": float(scaled[layer, head]),
            }
            for layer in range(raw.shape[0])
            for head in range(raw.shape[1])
        ]


# ------------------------------------------------------------------------------------------------
# objectives
# ------------------------------------------------------------------------------------------------
@dataclass
class _Batch:
    indices: tuple[int, ...]
    inputs: dict[str, Tensor]
    n_tokens: int
    target: Tensor | None = None  # class labels, MLM labels, self-labels or projection directions
    reference: Tensor | None = None  # the ungated output (kl): logits or hidden states


@dataclass
class _Settings:
    batch_size: int
    max_length: int | None
    seed: int
    fit_mlm_head: bool
    cache_dir: Path | None
    progress: bool
    metric: str | Sequence[str] | None = None
    mlm_head: nn.Module | None = None


@dataclass
class _Plan:
    """An objective bound to a model and examples: its batches, its loss, its evaluation."""

    objective: str
    label: str
    batches: list[_Batch]
    loss: Callable[[_Batch], Tensor | None]  # batch mean loss under the current gates
    evaluate: Callable[[], list[tuple[str, float]]]  # (metric, value) under the current gates
    modules: tuple[nn.Module, ...]  # extra modules to freeze while scoring (MLM heads)
    predict: Callable[[], Predictions] | None = None  # what the task head predicts, for intervals
    metrics: tuple[str, ...] = ()  # the metrics ``evaluate`` reports, when ``predict`` is given


@dataclass(frozen=True)
class Objective:
    """One entry of :data:`OBJECTIVES`.

    Attributes:
        name: Registry key.
        description: What loss is differentiated, in one sentence.
        needs_labels: Whether the examples must be labelled.
    """

    name: str
    description: str
    needs_labels: bool
    _plan: Callable[[Encoder, AnyExamples, _Settings], _Plan]


def _device(encoder: Encoder) -> torch.device:
    return next(encoder.model.parameters()).device


def _dtype(encoder: Encoder) -> torch.dtype:
    return next(encoder.model.parameters()).dtype


def _limit(encoder: Encoder, max_length: int | None) -> int:
    return max_length_for(
        encoder.tokenizer, encoder.model.config, 10**6 if max_length is None else max_length
    )


def _to(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def _count_tokens(inputs: dict[str, Tensor], pad_id: int | None) -> int:
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int((inputs["input_ids"] != (pad_id if pad_id is not None else -1)).sum())


def _example_rng(seed: int, tag: str, text: str, pair: str | None) -> np.random.Generator:
    """A generator that depends on the example's text (not its position), the seed and a tag."""
    key = f"{seed}\x1f{tag}\x1f{text}\x1f{'' if pair is None else pair}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def _texts(examples: AnyExamples) -> tuple[list[str], list[str] | None]:
    if isinstance(examples, TokenExamples):
        return examples.texts, None
    return examples.texts, examples.text_pairs


def _token_rows(encoder: Encoder, examples: AnyExamples, max_length: int | None) -> list[dict[str, Any]]:
    """Unpadded tokenised examples (no labels) with their special-tokens mask."""
    texts, pairs = _texts(examples)
    enc = encoder.tokenizer(
        texts, pairs, truncation=True, max_length=_limit(encoder, max_length), return_special_tokens_mask=True
    )
    return [{k: list(v[i]) for k, v in enc.items()} for i in range(len(texts))]


def _pad(encoder: Encoder, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Tensor]:
    """Right-pad the model inputs of ``rows``; ``attention_mask`` marks the real tokens."""
    pad_id = encoder.tokenizer.pad_token_id
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, Tensor] = {}
    for key in keys:
        if key not in rows[0]:
            continue
        fill = (pad_id or 0) if key == "input_ids" else 0
        out[key] = torch.tensor(
            [list(r[key]) + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long
        )
    if "attention_mask" not in out:
        out["attention_mask"] = torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows], dtype=torch.long
        )
    return out


def _model_keys(encoder: Encoder) -> list[str]:
    names = list(getattr(encoder.tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"])
    return [n for n in names if n in ("input_ids", "attention_mask", "token_type_ids")]


def _base_forward(encoder: Encoder, inputs: dict[str, Tensor]) -> Tensor:
    """Last hidden state ``(batch, seq_len, d_model)`` of the base model."""
    base = encoder.adapter.base_model(encoder.model)
    out = base(**inputs)
    hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden


# -- task -------------------------------------------------------------------------------------------
def _trained_head_check(encoder: Encoder, examples: AnyExamples) -> None:
    require_classifier(encoder, purpose="head importance with objective 'task'")
    have, want = head_kind(encoder.model), data_kind(examples)
    if have != want:
        raise InputError(
            f"objective 'task': {encoder.name} has a {have or 'no'}-level head but these examples need a "
            f"{want}-level one; fine-tune a {want} classifier, or use objective 'mlm' or 'kl'"
        )
    saved = [str(a) for a in (getattr(encoder.model.config, "architectures", None) or [])]
    if saved and not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in saved):
        raise InputError(
            f"objective 'task': {encoder.name} was saved as {', '.join(saved)}, so its classifier head is "
            "freshly initialised, not trained; fine-tune it first (tunescope finetune) or use objective "
            "'mlm' or 'kl'"
        )
    if isinstance(examples, Examples) and examples.labels is None:
        raise DataError(
            f"objective 'task' needs labelled examples but {examples.task} ({examples.split}) has no "
            "labels; use labelled data, or the label-free objectives 'mlm' or 'kl'"
        )


def _plan_task(encoder: Encoder, examples: AnyExamples, s: _Settings) -> _Plan:
    _trained_head_check(encoder, examples)
    rows = features(encoder.tokenizer, examples, _limit(encoder, s.max_length))
    collate = collator(encoder.tokenizer, data_kind(examples))
    pad_id = encoder.tokenizer.pad_token_id
    batches = []
    for idx in length_batches(rows, s.batch_size):
        inputs = dict(collate([rows[i] for i in idx]))
        labels = inputs.pop("labels")
        batches.append(_Batch(tuple(idx), inputs, _count_tokens(inputs, pad_id), target=labels))
    device = _device(encoder)

    def loss(batch: _Batch) -> Tensor:
        assert batch.target is not None
        labels = batch.target
        if labels.is_floating_point():  # regression / multi-label targets follow the model's dtype
            labels = labels.to(_dtype(encoder))
        out: Tensor = encoder.model(**_to(batch.inputs, device), labels=labels.to(device)).loss
        return out

    names = tuple(_metric_names(s.metric, None, examples))
    _check_fits(encoder, examples, names)

    def predict() -> Predictions:
        return predictions(
            encoder, examples, batch_size=s.batch_size, max_length=_limit(encoder, s.max_length)
        )

    def evaluate() -> list[tuple[str, float]]:
        found = predict()
        scores = score(list(names), found.predictions, found.labels)
        return [(name, float(value)) for name, value in scores.items() if name != "n"]

    return _Plan("task", "task", batches, loss, evaluate, (), predict, names)


# -- mlm --------------------------------------------------------------------------------------------
class FittedMLMHead(nn.Module):
    """A masked-LM head fitted on a frozen encoder: ``decoder(LayerNorm(gelu(dense(h))))``.

    The shape of BERT's ``BertOnlyMLMHead``: ``dense`` maps ``d_model`` to the embedding width ``E``;
    the decoder's weight is the encoder's input embedding matrix ``(vocab, E)`` (tied and frozen) when
    the config ties word embeddings, else a trainable copy of it; the decoder bias is trained.

    Attributes:
        label: ``"mlm (fitted head)"``.
        steps: Optimisation steps it was fitted for.
        final_loss: Mean masked-LM loss over the last 10% of the fitting steps.
    """

    label = FITTED_LABEL

    def __init__(self, embedding: Tensor, d_model: int, *, tied: bool, eps: float = 1e-12) -> None:
        super().__init__()
        vocab, width = embedding.shape
        self.dense = nn.Linear(d_model, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.tied = tied
        if tied:  # the encoder's own storage, detached: neither a parameter of this head nor trained
            self._embedding = embedding.detach()
        else:
            self.decoder = nn.Parameter(embedding.detach().clone())
        self.steps = 0
        self.final_loss = math.nan

    @property
    def decoder_weight(self) -> Tensor:
        """``(vocab, E)``: the tied embedding matrix or the head's own copy."""
        return self._embedding if self.tied else self.decoder

    def forward(self, hidden: Tensor) -> Tensor:
        """``(..., d_model)`` hidden states -> ``(..., vocab)`` logits."""
        x = self.norm(F.gelu(self.dense(hidden)))
        weight = self.decoder_weight.to(dtype=x.dtype, device=x.device)
        return x @ weight.T + self.bias.to(dtype=x.dtype)


def _mlm_rows(
    encoder: Encoder, examples: AnyExamples, max_length: int | None, seed: int, tag: str
) -> list[dict[str, Any]]:
    """Tokenised examples with seeded MLM corruption: ``input_ids`` corrupted, ``mlm_labels`` set.

    In each example ``max(1, round(0.15 * m))`` of its ``m`` non-special tokens are chosen uniformly
    without replacement; each chosen token becomes ``[MASK]`` with probability 0.8, a uniformly drawn
    vocabulary token with probability 0.1, and stays as it is with probability 0.1 (Devlin et al. 2019).
    The generator is seeded by ``seed``, ``tag`` and the example's text, so an example gets the same
    masks in every call whatever its position.
    """
    tokenizer = encoder.tokenizer
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise InputError(f"objective 'mlm' needs a tokenizer with a mask token; {encoder.name}'s has none")
    vocab = int(encoder.model.config.vocab_size)
    texts, pairs = _texts(examples)
    rows = _token_rows(encoder, examples, max_length)
    for i, row in enumerate(rows):
        rng = _example_rng(seed, tag, texts[i], None if pairs is None else pairs[i])
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        candidates = np.flatnonzero(np.asarray(row.pop("special_tokens_mask")) == 0)
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        if candidates.size:
            n_mask = max(1, round(MASK_FRACTION * candidates.size))
            chosen = np.sort(rng.choice(candidates, size=n_mask, replace=False))
            labels[chosen] = ids[chosen]
            action = rng.random(n_mask)
            random_ids = rng.integers(0, vocab, size=n_mask)
            ids[chosen] = np.where(action < 0.8, mask_id, np.where(action < 0.9, random_ids, ids[chosen]))
        row["input_ids"] = ids.tolist()
        row["mlm_labels"] = labels.tolist()
    return rows


def _mlm_batches(encoder: Encoder, rows: list[dict[str, Any]], batch_size: int) -> list[_Batch]:
    keys = _model_keys(encoder)
    batches = []
    for idx in length_batches(rows, batch_size):
        chosen = [rows[i] for i in idx]
        inputs = _pad(encoder, chosen, keys)
        width = inputs["input_ids"].shape[1]
        labels = torch.tensor(
            [r["mlm_labels"] + [IGNORE_INDEX] * (width - len(r["mlm_labels"])) for r in chosen],
            dtype=torch.long,
        )
        batches.append(_Batch(tuple(idx), inputs, _count_tokens(inputs, None), target=labels))
    return batches


def _mlm_source(encoder: Encoder) -> Literal["self", "checkpoint"] | None:
    """Where the pre-trained MLM head is: the model itself, its checkpoint folder, or nowhere."""
    if type(encoder.model).__name__.endswith("ForMaskedLM"):
        return "self"
    if encoder.path is None or not encoder.adapter.mlm_head_prefixes:
        return None
    return "checkpoint" if encoder.describe()["has_mlm_head"] else None


def _checkpoint_mlm(encoder: Encoder) -> nn.Module | None:
    """A masked-LM model running ``encoder``'s own base model with the checkpoint's MLM head, or None."""
    model = encoder.model
    source = _mlm_source(encoder)
    if source is None:
        return None
    if source == "self":
        return model
    import transformers

    try:
        mlm: Any = transformers.AutoModelForMaskedLM.from_pretrained(str(encoder.path))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"could not load the masked-LM head of {encoder.path}: {str(exc).splitlines()[0]}; re-save the "
            "checkpoint with save_pretrained(), or pass fit_mlm_head=True to fit a head instead"
        ) from exc
    mlm.to(device=_device(encoder), dtype=_dtype(encoder))
    mlm.eval()
    # run the caller's encoder (which carries the gates) under the checkpoint's head
    setattr(mlm, mlm.base_model_prefix, encoder.adapter.base_model(model))
    return mlm  # type: ignore[no-any-return]


def _fit_key(encoder: Encoder, examples: AnyExamples, steps: int, seed: int, max_length: int | None) -> str:
    parts = (_FIT_VERSION, encoder.fingerprint, examples.content_hash, str(steps), str(seed), str(max_length))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def fit_mlm_head(
    model: Encoder | transformers.PreTrainedModel,
    examples: AnyExamples,
    *,
    steps: int = 300,
    draws: int = 4,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    max_length: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> FittedMLMHead:
    """Fit a masked-LM head on a frozen encoder (for checkpoints without one, such as MiniLM).

    The encoder runs once per mask draw (no gradients) on ``draws`` seeded corruptions of
    ``examples`` (see the ``mlm`` objective for the 15% / 80-10-10 scheme; the fitting masks come from
    their own seed stream, not the scoring one); the hidden states of the masked positions are kept,
    and :class:`FittedMLMHead` is fitted to predict the original tokens with Adam, minibatches of 256
    positions drawn with a generator seeded by ``seed``. Results are cached in memory (last 8 fits)
    and, when ``cache_dir`` is given, in ``cache_dir/mlm-head-<key>.safetensors``; the key covers the
    model fingerprint, the examples' content hash, ``steps``, ``draws``, ``learning_rate``, ``seed``
    and ``max_length``.

    Args:
        model: An :class:`~tunescope.models.Encoder` (base or classifier) or a transformers model.
        examples: Texts to fit on (labels are ignored).
        steps: Adam steps.
        draws: Mask draws whose hidden states form the training set.
        learning_rate: Adam's learning rate.
        batch_size: Examples per encoder forward.
        max_length: Truncate inputs to this many tokens (default: the model's limit).
        seed: Seeds the masks, the head's initialisation and the minibatches.
        cache_dir: Folder for the on-disk cache (created if missing); ``None``: memory only.
        tokenizer: The tokenizer, when ``model`` is a bare transformers model.
        progress: Progress bar on stderr.

    Returns:
        The fitted head, in eval mode, with its parameters frozen.

    Raises:
        InputError: Bad arguments, or a tokenizer without mask token.
        CacheError: The cached file exists but cannot be read.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> ex = Examples(["a good film", "a bad plot"], None, None, "demo", "train", None)
        >>> head = fit_mlm_head(enc, ex, steps=20, progress=False)
        >>> head.label, head.steps
        ('mlm (fitted head)', 20)
    """
    encoder = _as_encoder(model, tokenizer)
    for name, value in (("steps", steps), ("draws", draws), ("batch_size", batch_size)):
        if int(value) < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if not learning_rate > 0:
        raise InputError(f"learning_rate must be positive, got {learning_rate}")
    _check_examples(examples)
    key = _fit_key(encoder, examples, steps, seed, max_length) + f"-{draws}-{learning_rate!r}"
    path = Path(cache_dir) / f"mlm-head-{key}.safetensors" if cache_dir is not None else None
    head = _new_head(encoder, seed)
    state = _MEMORY_CACHE.get(key)
    if state is None and path is not None and path.is_file():
        state = _read_cached_head(path)
    if state is not None:
        head.load_state_dict(_head_state(state), strict=False)
        head.steps = int(state["steps"].item())
        head.final_loss = float(state["final_loss"].item())
    else:
        _fit(encoder, examples, head, steps, draws, learning_rate, batch_size, max_length, seed, progress)
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        state["steps"] = torch.tensor(head.steps)
        state["final_loss"] = torch.tensor(head.final_loss, dtype=torch.float64)
        if path is not None:
            from tunescope._io import save_safetensors

            path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors(state, path, metadata={"kind": _FIT_VERSION})
    _MEMORY_CACHE[key] = state
    _MEMORY_CACHE.move_to_end(key)
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
        _MEMORY_CACHE.popitem(last=False)
    head.requires_grad_(False)
    return head.eval()


def _head_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if k not in ("steps", "final_loss")}


def _read_cached_head(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheError(f"{path} is not a readable fitted MLM head ({exc}); delete it to fit again") from exc
    if "steps" not in state or "dense.weight" not in state:
        raise CacheError(f"{path} does not hold a fitted MLM head; delete it to fit again")
    return state


def _new_head(encoder: Encoder, seed: int) -> FittedMLMHead:
    config = encoder.model.config
    embedding: Tensor = encoder.model.get_input_embeddings().weight  # type: ignore[assignment]
    tied = bool(getattr(config, "tie_word_embeddings", True))
    eps = float(getattr(config, "layer_norm_eps", 1e-12) or 1e-12)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = FittedMLMHead(embedding, encoder.hidden_size, tied=tied, eps=eps)
        nn.init.normal_(head.dense.weight, std=float(getattr(config, "initializer_range", 0.02)))
        nn.init.zeros_(head.dense.bias)
    return head.to(device=_device(encoder), dtype=_dtype(encoder))


def _fit(
    encoder: Encoder,
    examples: AnyExamples,
    head: FittedMLMHead,
    steps: int,
    draws: int,
    learning_rate: float,
    batch_size: int,
    max_length: int | None,
    seed: int,
    progress: bool,
) -> None:
    device = _device(encoder)
    hidden, targets = [], []
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        with torch.no_grad():
            for draw in range(draws):
                rows = _mlm_rows(encoder, examples, max_length, seed, f"fit{draw}")
                for batch in _mlm_batches(encoder, rows, batch_size):
                    assert batch.target is not None
                    keep = batch.target != IGNORE_INDEX
                    h = _base_forward(encoder, _to(batch.inputs, device))
                    hidden.append(h[keep.to(device)])
                    targets.append(batch.target[keep].to(device))
    finally:
        encoder.model.train(was_training)
    x, y = torch.cat(hidden), torch.cat(targets)
    if x.shape[0] == 0:
        raise DataError("no maskable tokens in the examples; fitting an MLM head needs non-empty texts")
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    losses = []
    head.train()
    for _ in track(range(steps), total=steps, description="fitting an MLM head", enabled=progress):
        rows_idx = torch.randint(x.shape[0], (min(256, x.shape[0]),), generator=gen).to(device)
        loss = F.cross_entropy(head(x[rows_idx]), y[rows_idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    head.steps = steps
    tail = losses[-max(1, steps // 10) :]
    head.final_loss = sum(tail) / len(tail)


def _plan_mlm(encoder: Encoder, examples: AnyExamples, s: _Settings) -> _Plan:
    rows = _mlm_rows(encoder, examples, s.max_length, s.seed, "score")
    batches = _mlm_batches(encoder, rows, s.batch_size)
    device = _device(encoder)
    checkpoint = None if s.mlm_head is not None else _checkpoint_mlm(encoder)
    head: nn.Module
    if checkpoint is not None:
        mlm_model = checkpoint

        def logits_at(inputs: dict[str, Tensor], keep: Tensor) -> Tensor:
            logits: Tensor = mlm_model(**inputs).logits
            return logits[keep]

        label, head = "mlm", mlm_model
    else:
        if not s.fit_mlm_head:
            raise InputError(
                f"objective 'mlm': {encoder.name} has no pre-trained masked-LM head; pass "
                "fit_mlm_head=True to fit one on the frozen encoder (labelled 'mlm (fitted head)'), or "
                "load a checkpoint saved with its MLM head"
            )
        fitted = s.mlm_head or fit_mlm_head(
            encoder,
            examples,
            max_length=s.max_length,
            seed=s.seed,
            cache_dir=s.cache_dir,
            progress=s.progress,
        )

        def logits_at(inputs: dict[str, Tensor], keep: Tensor) -> Tensor:
            out: Tensor = fitted(_base_forward(encoder, inputs)[keep])
            return out

        label, head = FITTED_LABEL, fitted

    def loss(batch: _Batch) -> Tensor | None:
        assert batch.target is not None
        keep = (batch.target != IGNORE_INDEX).to(device)
        if not bool(keep.any()):
            return None
        return F.cross_entropy(logits_at(_to(batch.inputs, device), keep), batch.target.to(device)[keep])

    def evaluate() -> list[tuple[str, float]]:
        total, correct, count = 0.0, 0, 0
        with torch.inference_mode():
            for batch in batches:
                assert batch.target is not None
                keep = (batch.target != IGNORE_INDEX).to(device)
                if not bool(keep.any()):
                    continue
                logits = logits_at(_to(batch.inputs, device), keep).double()
                gold = batch.target.to(device)[keep]
                total += float(F.cross_entropy(logits, gold, reduction="sum"))
                correct += int((logits.argmax(-1) == gold).sum())
                count += int(gold.numel())
        if count == 0:
            return [("mlm_loss", math.nan), ("mlm_accuracy", math.nan)]
        return [("mlm_loss", total / count), ("mlm_accuracy", correct / count)]

    return _Plan("mlm", label, batches, loss, evaluate, (head,))


# -- kl ---------------------------------------------------------------------------------------------
def _plan_kl(encoder: Encoder, examples: AnyExamples, s: _Settings) -> _Plan:
    """The ``kl`` objective of a classifier (a bare encoder: :func:`_plan_kl_hidden`).

    Long (about 65 lines) because its loss and its evaluation are closures over the same batches and
    the ungated model's reference outputs, computed once here; split apart they would pass all of them.
    """
    kind = head_kind(encoder.model)
    if kind is None:
        return _plan_kl_hidden(encoder, examples, s)
    config: Any = encoder.model.config
    if getattr(config, "problem_type", None) == "regression" or int(config.num_labels) == 1:
        raise InputError(
            "objective 'kl' needs a classification head (a regression head has no output distribution); "
            "use objective 'task' with labels, or 'mlm'"
        )
    multi = getattr(config, "problem_type", None) == "multi_label_classification"
    rows = _token_rows(encoder, examples, s.max_length)
    for row in rows:
        row.pop("special_tokens_mask")
    device = _device(encoder)
    keys = _model_keys(encoder)
    batches = []
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        for idx in length_batches(rows, s.batch_size):
            inputs = _pad(encoder, [rows[i] for i in idx], keys)
            with torch.no_grad():
                logits = encoder.model(**_to(inputs, device)).logits
            probs = torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
            target = (probs > 0.5).to(logits.dtype) if multi else logits.argmax(-1)
            batches.append(_Batch(tuple(idx), inputs, _count_tokens(inputs, None), target, logits.cpu()))
    finally:
        encoder.model.train(was_training)

    def positions(batch: _Batch, logits: Tensor) -> Tensor:
        """Which outputs count: every example, or the real tokens of each (token classifiers)."""
        if kind == "token":
            return batch.inputs["attention_mask"].to(logits.device).bool()
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)

    def loss(batch: _Batch) -> Tensor:
        assert batch.target is not None
        logits = encoder.model(**_to(batch.inputs, device)).logits
        keep = positions(batch, logits)
        target = batch.target.to(device)[keep]
        if multi:
            return F.binary_cross_entropy_with_logits(logits[keep], target)
        return F.cross_entropy(logits[keep], target)

    def evaluate() -> list[tuple[str, float]]:
        kl_total, agree, count = 0.0, 0, 0
        with torch.inference_mode():
            for batch in batches:
                assert batch.reference is not None
                logits = encoder.model(**_to(batch.inputs, device)).logits.double()
                keep = positions(batch, logits)
                reference = batch.reference.to(device).double()[keep]  # the ungated logits
                p = torch.sigmoid(reference) if multi else torch.softmax(reference, -1)
                if multi:
                    q = torch.sigmoid(logits[keep]).clamp(1e-12, 1 - 1e-12)
                    p = p.clamp(1e-12, 1 - 1e-12)
                    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1)
                    agree += int(((q > 0.5) == (p > 0.5)).all(-1).sum())
                else:
                    log_q = torch.log_softmax(logits[keep], -1)
                    kl = (p * (torch.log_softmax(reference, -1) - log_q)).sum(-1)
                    agree += int((log_q.argmax(-1) == p.argmax(-1)).sum())
                kl_total += float(kl.sum())
                count += int(kl.numel())
        return [("kl", kl_total / count), ("agreement", agree / count)]

    return _Plan("kl", "kl", batches, loss, evaluate, ())


def _plan_kl_hidden(encoder: Encoder, examples: AnyExamples, s: _Settings) -> _Plan:
    rows = _token_rows(encoder, examples, s.max_length)
    texts, pairs = _texts(examples)
    d_model = encoder.hidden_size
    for i, row in enumerate(rows):
        row.pop("special_tokens_mask")
        rng = _example_rng(s.seed, "kl-projection", texts[i], None if pairs is None else pairs[i])
        row["projection"] = rng.standard_normal((len(row["input_ids"]), d_model))
    device, dtype = _device(encoder), _dtype(encoder)
    keys = _model_keys(encoder)
    batches = []
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        for idx in length_batches(rows, s.batch_size):
            chosen = [rows[i] for i in idx]
            inputs = _pad(encoder, chosen, keys)
            r = torch.zeros(len(chosen), inputs["input_ids"].shape[1], d_model, dtype=torch.float64)
            for j, row in enumerate(chosen):
                r[j, : len(row["input_ids"])] = torch.from_numpy(row["projection"])
            with torch.no_grad():
                h = _base_forward(encoder, _to(inputs, device)).cpu()
            batches.append(_Batch(tuple(idx), inputs, _count_tokens(inputs, None), r, h))
    finally:
        encoder.model.train(was_training)

    def loss(batch: _Batch) -> Tensor:
        assert batch.target is not None
        h = _base_forward(encoder, _to(batch.inputs, device))
        r = batch.target.to(device=device, dtype=dtype)  # zero on padding
        return (h * r).sum() / batch.n_tokens

    def evaluate() -> list[tuple[str, float]]:
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in batches:
                assert batch.reference is not None
                mask = batch.inputs["attention_mask"].bool().to(device)
                h = _base_forward(encoder, _to(batch.inputs, device)).double()
                diff = (h - batch.reference.to(device).double())[mask]
                total += float((diff**2).sum())
                count += int(mask.sum())
        return [("hidden_mse", total / count)]

    return _Plan("kl", "kl (hidden state)", batches, loss, evaluate, ())


OBJECTIVES: dict[str, Objective] = {
    "task": Objective(
        "task",
        "the trained classifier's own loss (cross-entropy, MSE for regression) on labelled examples",
        True,
        _plan_task,
    ),
    "mlm": Objective(
        "mlm",
        "masked-LM cross-entropy on 15% of the non-special tokens (80/10/10 [MASK]/random/unchanged, "
        "seeded per example), with the checkpoint's MLM head or one fitted on the frozen encoder",
        False,
        _plan_mlm,
    ),
    "kl": Objective(
        "kl",
        "label-free: cross-entropy of the gated classifier against the ungated model's argmax labels, "
        "i.e. KL(one-hot(argmax p) || q_g); a model without classifier: <r, h_g> / T with seeded "
        "Gaussian directions r per token (|gradient|^2 estimates the sensitivity ||dh/dg||^2)",
        False,
        _plan_kl,
    ),
}
"""Importance objectives by name.

Why ``kl`` is not the literal KL: ``D(g) = KL(p || q_g)`` between the ungated output ``p`` and the
gated ``q_g`` has its minimum at ``g = 1``, so its gradient there is exactly zero for every head (and
so is the gradient of the cross-entropy with the soft targets ``p``, which differs from it by a
constant). Gradient-magnitude importance needs a first-order signal, so ``kl`` differentiates

- for a classifier: ``-log q_g(ŷ)`` with ``ŷ = argmax p`` fixed from the ungated model (the KL from
  the ungated model's *decision* to the gated distribution; multi-label heads: binary cross-entropy
  against ``p > 0.5``; token classifiers: every real token of each example);
- for a base encoder: ``(1/T) sum_t <r_t, h_t(g)>``, ``r_t ~ N(0, I)`` seeded per example, ``h_t`` the
  last hidden state of the ``T`` real tokens. For independent ``r_t``,
  ``E_r[(d/dg_{l,h})^2] = (1/T^2) sum_t ||d h_t / d g_{l,h}||^2``: the curvature at ``g = 1`` of the
  mean squared change of the hidden states, the quantity the literal objective would measure at
  second order (a Hutchinson-style estimate).

Evaluation under a mask (:func:`prune_curve`) reports the literal quantities: the mean KL and the share
of unchanged predictions, or the mean squared change of the hidden states (``hidden_mse``).
"""


# ------------------------------------------------------------------------------------------------
# importance
# ------------------------------------------------------------------------------------------------
def _as_encoder(model: Any, tokenizer: Any) -> Encoder:
    if isinstance(model, Encoder):
        return model
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        raise InputError(f"expected a tunescope Encoder or a transformers model, got {type(model).__name__}")
    if tokenizer is None:
        raise InputError(
            "a bare transformers model needs its tokenizer: pass tokenizer=..., or wrap both with "
            "tunescope.models.from_model(model, tokenizer)"
        )
    return from_model(model, tokenizer)  # type: ignore[arg-type]


def _check_examples(examples: Any) -> None:
    data_kind(examples)  # raises on anything but Examples / TokenExamples
    if len(examples) == 0:
        raise DataError("no examples given; head importance needs at least one")


def _objective(name: str, what: str = "objective") -> Objective:
    found = OBJECTIVES.get(name)
    if found is None:
        raise UnknownNameError(what, name, OBJECTIVES)
    return found


@contextmanager
def _frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    params = {id(p): p for m in modules for p in m.parameters()}
    flags = {k: p.requires_grad for k, p in params.items()}
    modes = [(sub, sub.training) for module in modules for sub in module.modules()]
    try:
        for p in params.values():
            p.requires_grad_(False)
        for m in modules:
            m.eval()
        yield
    finally:
        for k, p in params.items():
            p.requires_grad_(flags[k])
        for module, mode in modes:
            module.training = mode


def _check_common(batch_size: int, max_length: int | None) -> None:
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if max_length is not None and int(max_length) < 2:
        raise InputError(f"max_length must be at least 2, got {max_length}")


def _score(encoder: Encoder, plan: _Plan, gates: Tensor, normalize: bool, progress: bool) -> HeadImportance:
    """One forward and one backward per batch; gradients w.r.t. the gates only."""
    g = gates.detach().to(device=_device(encoder), dtype=_dtype(encoder)).clone().requires_grad_(True)
    sums = []
    with _frozen((encoder.model, *plan.modules)), HeadGates(encoder, g):
        for batch in track(
            plan.batches, total=len(plan.batches), description="head importance", enabled=progress
        ):
            loss = plan.loss(batch)
            if loss is None:
                sums.append(torch.zeros(g.shape, dtype=torch.float64))
                continue
            (grad,) = torch.autograd.grad(loss, g, allow_unused=True)
            sums.append(
                torch.zeros(g.shape, dtype=torch.float64) if grad is None else grad.abs().double().cpu()
            )
    return HeadImportance(
        objective=plan.objective,
        label=plan.label,
        batch_sums=torch.stack(sums),
        batch_tokens=torch.tensor([float(b.n_tokens) for b in plan.batches], dtype=torch.float64),
        batch_indices=tuple(b.indices for b in plan.batches),
        normalized=normalize,
    )


def _prepare(
    model: Any,
    examples: Any,
    tokenizer: Any,
    device: str | torch.device | None,
) -> Encoder:
    encoder = _as_encoder(model, tokenizer)
    _check_examples(examples)
    if device is not None:
        encoder.model.to(resolve_device(device))  # type: ignore[arg-type]
    return encoder


def head_importance_batches(
    model: Encoder | transformers.PreTrainedModel,
    examples: AnyExamples,
    objective: str = "task",
    *,
    normalize: bool = True,
    gates: Tensor | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    fit_mlm_head: bool = True,
    mlm_head: nn.Module | None = None,
    cache_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> HeadImportance:
    """Head importance with its per-batch sums (for bootstraps over batches, see :func:`coherence`).

    Computes, in one forward and one backward per batch (``torch.autograd.grad`` with respect to the
    gates only; parameters frozen, model in eval mode, both restored afterwards), the quantities of
    :class:`HeadImportance`:

    ``I_{l,h} = (sum_b |d L̄_b / d g_{l,h}|) / (sum_b T_b)``, and with ``normalize``
    ``Î_{l,h} = I_{l,h} / ||I_{l,:}||_2``.

    Args:
        model: An :class:`~tunescope.models.Encoder` (from ``load_classifier`` or ``load_encoder``) or a
            transformers model (then pass ``tokenizer``).
        examples: :class:`~tunescope.data.Examples`, or
            :class:`~tunescope.data.tokens.TokenExamples` (objective ``task`` with a token classifier,
            or any label-free objective).
        objective: A name in :data:`OBJECTIVES`: ``task``, ``mlm`` or ``kl``.
        normalize: Whether :attr:`HeadImportance.scores` divides each layer by its L2 norm.
        gates: ``(n_layers, n_heads)`` gate values to differentiate at (default ones); zeros mask heads
            (Michel et al.'s re-scoring under the current mask).
        batch_size: Examples per batch (batches are length-sorted).
        max_length: Truncate inputs to this many tokens (default: the model's limit).
        device: Move the model there first (default: where it is).
        progress: Progress bars on stderr.
        seed: Seeds the MLM masks, the ``kl`` projections of a base encoder and a fitted MLM head.
        fit_mlm_head: For ``mlm`` on a checkpoint without MLM head: fit one (else raise).
        mlm_head: For ``mlm``: a head fitted before (:func:`fit_mlm_head`, mapping last hidden states
            to vocabulary logits) to use instead of the checkpoint's own or a new fit, e.g. the
            pre-trained model's head to score a fine-tuned copy on the pre-training objective.
        cache_dir: On-disk cache folder of fitted MLM heads.
        tokenizer: The tokenizer, when ``model`` is a bare transformers model.

    Returns:
        :class:`HeadImportance` (``scores`` of shape ``(n_layers, n_heads)``, row ``l - 1`` = layer ``l``).

    Raises:
        UnknownNameError: Unknown objective.
        InputError: ``task`` on a model without trained classifier head, ``mlm`` without MLM head and
            ``fit_mlm_head=False``, bad arguments.
        DataError: ``task`` on unlabelled examples, or no examples.

    Example:
        >>> import numpy as np
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert", task="classifier")
        >>> ex = Examples(["good", "bad", "a fine film"], None, np.array([1, 0, 1]), "demo", "test", None)
        >>> result = head_importance_batches(enc, ex, batch_size=2, progress=False)
        >>> result.batch_sums.shape, result.scores.shape
        (torch.Size([2, 2, 4]), torch.Size([2, 4]))
    """
    spec = _objective(objective)
    _check_common(batch_size, max_length)
    encoder = _prepare(model, examples, tokenizer, device)
    values = _gate_values(encoder, gates)
    settings = _Settings(
        batch_size,
        max_length,
        seed,
        fit_mlm_head,
        None if cache_dir is None else Path(cache_dir),
        progress,
        mlm_head=mlm_head,
    )
    plan = spec._plan(encoder, examples, settings)
    return _score(encoder, plan, values, normalize, progress)


def _gate_values(encoder: Encoder, gates: Tensor | None) -> Tensor:
    shape = (encoder.num_layers, encoder.num_heads)
    if gates is None:
        return torch.ones(shape, dtype=torch.float64)
    if not isinstance(gates, Tensor) or tuple(gates.shape) != shape:
        got = tuple(gates.shape) if isinstance(gates, Tensor) else type(gates).__name__
        raise InputError(f"gates must be a tensor of shape (n_layers, n_heads) = {shape}, got {got}")
    return gates.detach().double().cpu()


def head_importance(
    model: Encoder | transformers.PreTrainedModel,
    examples: AnyExamples,
    objective: str = "task",
    *,
    normalize: bool = True,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    fit_mlm_head: bool = True,
    mlm_head: nn.Module | None = None,
    cache_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> Tensor:
    """Importance of every attention head, from one forward and one backward per batch.

    Michel et al. (2019): ``I_{l,h} = (sum_b |d L̄_b / d g_{l,h}|) / (sum_b T_b)`` at all gates 1, with
    ``L̄_b`` the mean loss of batch ``b`` and ``T_b`` its non-padding tokens (with ``batch_size=1``,
    ``n/T * E_x |dL(x)/d g_{l,h}|``); ``normalize=True`` returns ``I_{l,h} / ||I_{l,:}||_2``.
    See :func:`head_importance_batches` for the arguments and the per-batch sums, and
    :data:`OBJECTIVES` for the losses.

    Returns:
        ``(n_layers, n_heads)`` float64; row ``l - 1`` is layer ``l``.

    Example:
        >>> import numpy as np
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("distilbert", task="classifier")
        >>> ex = Examples(["good", "bad", "fine"], None, np.array([1, 0, 1]), "demo", "test", None)
        >>> scores = head_importance(enc, ex, progress=False)
        >>> scores.shape, bool(torch.allclose(scores.norm(dim=1), torch.ones(2, dtype=torch.float64)))
        (torch.Size([2, 4]), True)
    """
    return head_importance_batches(
        model,
        examples,
        objective,
        normalize=normalize,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        progress=progress,
        seed=seed,
        fit_mlm_head=fit_mlm_head,
        mlm_head=mlm_head,
        cache_dir=cache_dir,
        tokenizer=tokenizer,
    ).scores


def objective_label(
    model: Encoder | transformers.PreTrainedModel,
    objective: str,
    *,
    fit_mlm_head: bool = True,
    tokenizer: Any = None,
) -> str:
    """How results of ``objective`` on ``model`` are labelled in tables, without computing anything.

    ``"mlm (fitted head)"`` for ``mlm`` on a checkpoint without MLM head, ``"kl (hidden state)"`` for
    ``kl`` on a model without classifier, else the objective's name.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> objective_label(tiny_model("bert"), "mlm"), objective_label(tiny_model("bert"), "kl")
        ('mlm (fitted head)', 'kl (hidden state)')
    """
    _objective(objective)
    encoder = _as_encoder(model, tokenizer)
    if objective == "mlm":
        if _mlm_source(encoder) is not None:
            return "mlm"
        if not fit_mlm_head:
            raise InputError(
                f"objective 'mlm': {encoder.name} has no pre-trained masked-LM head; pass fit_mlm_head=True"
            )
        return FITTED_LABEL
    if objective == "kl" and head_kind(encoder.model) is None:
        return "kl (hidden state)"
    return objective


# ------------------------------------------------------------------------------------------------
# pruning curves
# ------------------------------------------------------------------------------------------------
def _schedule(n_layers: int, n_heads: int, step: float, scope: Scope, allow_empty: bool) -> list[int]:
    """Pruned-head counts after each step: global counts, or per-layer counts for scope ``layer``."""
    if scope == "global":
        total = n_layers * n_heads
        limit = total - (0 if allow_empty else n_layers)
        per_step = max(1, round(step * total))
    else:
        limit = n_heads - (0 if allow_empty else 1)
        per_step = max(1, round(step * n_heads))
    counts = list(range(0, limit + 1, per_step))
    if counts[-1] != limit:
        counts.append(limit)
    return counts


def _prune_more(scores: Tensor, alive: Tensor, target: int, scope: Scope, allow_empty: bool) -> Tensor:
    """``alive`` with the lowest-scoring live heads switched off until ``target`` are off.

    Global scope: ``target`` counts all heads, and the last live head of a layer is kept unless
    ``allow_empty``. Layer scope: ``target`` heads off in every layer. Ties go to the lower index.
    """
    alive = alive.clone()
    n_layers, n_heads = alive.shape
    if scope == "layer":
        for layer in range(n_layers):
            order = torch.argsort(scores[layer], stable=True)
            for head in order.tolist():
                if int((~alive[layer]).sum()) >= target:
                    break
                alive[layer, head] = False
        return alive
    for flat in torch.argsort(scores.reshape(-1), stable=True).tolist():
        if int((~alive).sum()) >= target:
            break
        layer, head = divmod(flat, n_heads)
        if not alive[layer, head]:
            continue
        if not allow_empty and int(alive[layer].sum()) <= 1:
            continue
        alive[layer, head] = False
    return alive


def _locations(alive: Tensor) -> str:
    return ";".join(location(layer + 1, head=head) for layer, head in (~alive).nonzero().tolist())


def least_important(
    scores: Tensor, fraction: float, *, scope: str = "global", allow_empty_layers: bool = False
) -> dict[int, list[int]]:
    """The heads to prune: the ``fraction`` of all heads with the lowest scores, one shot.

    ``scores`` is an importance map (L, H) (:func:`head_importance`; normalise it per layer first for
    a global ranking, as Michel et al. do). With ``scope="global"`` the last head of a layer is kept
    unless ``allow_empty_layers``; with ``scope="layer"`` every layer loses the same number of heads.
    The result feeds :func:`tunescope.surgery.prune_heads` or :func:`tunescope.models.mask_heads`.

    Raises:
        InputError: ``fraction`` outside [0, 1), or more heads asked for than may go.

    Example:
        >>> least_important(torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]]), 0.5)
        {1: [1, 2], 2: [0]}
    """
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise InputError("scores must be an (n_layers, n_heads) tensor, as head_importance returns")
    if isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise InputError(f"fraction must be in [0, 1), got {fraction!r}; e.g. 0.3 prunes 30% of the heads")
    if scope not in ("global", "layer"):
        raise UnknownNameError("scope", scope, ("global", "layer"))
    n_layers, n_heads = scores.shape
    typed: Scope = "global" if scope == "global" else "layer"
    total = n_layers * n_heads if typed == "global" else n_heads
    target = round(fraction * total)
    limit = total - (0 if allow_empty_layers else (n_layers if typed == "global" else 1))
    if target > limit:
        raise InputError(
            f"pruning {target} of {total} heads would empty a layer; prune at most {limit} "
            "(a smaller fraction), or pass allow_empty_layers=True"
        )
    alive = _prune_more(
        scores.double().cpu(),
        torch.ones(n_layers, n_heads, dtype=torch.bool),
        target,
        typed,
        allow_empty_layers,
    )
    chosen: dict[int, list[int]] = {}
    for layer, head in (~alive).nonzero().tolist():
        chosen.setdefault(layer + 1, []).append(head)
    return chosen


def prune_curve(
    model: Encoder | transformers.PreTrainedModel,
    examples: AnyExamples,
    *,
    rank_by: str = "task",
    objective: str = "task",
    step: float = 0.1,
    rescore: bool = True,
    scope: str = "global",
    allow_empty_layers: bool = False,
    metric: str | Sequence[str] | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
    fit_mlm_head: bool = True,
    mlm_head: nn.Module | None = None,
    cache_dir: str | Path | None = None,
    tokenizer: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    keep_predictions: bool = False,
) -> Any:
    """Mask the least important heads a step at a time and evaluate after every step.

    Michel et al. (2019), section 4: start from the full model, switch off the ``step`` share of all
    heads with the lowest (layer-normalised) importance, re-score under the new mask when ``rescore``,
    and repeat until the most that may be pruned is pruned. Heads are masked with gates (no weights
    change). ``rank_by="random"`` ranks by a seeded random permutation instead: the control a
    meaningful ranking must beat.

    Args:
        model: As for :func:`head_importance_batches`.
        examples: Scored and evaluated examples (labelled when ``task`` is the ranking or the objective).
        rank_by: ``task``, ``mlm``, ``kl`` (objectives, see :data:`OBJECTIVES`) or ``random``.
        objective: What is evaluated after each step: ``task`` (the metric of
            :func:`tunescope.inference.evaluate`; ``metric`` chooses), ``mlm`` (``mlm_loss``,
            ``mlm_accuracy``) or ``kl`` (``kl`` and ``agreement`` with the full model, or ``hidden_mse``).
        step: Share of heads pruned per step, in (0, 1). With ``scope="layer"`` the share of each
            layer's heads (at least one head per step).
        rescore: Re-score importance under the current mask after each step (else rank once).
        scope: ``global`` ranks all heads together; ``layer`` prunes the same number in every layer.
        allow_empty_layers: Whether a layer may lose all its heads (default: one is always kept).
        metric: Task metric name(s) for ``objective="task"`` (default as in ``evaluate``).
        batch_size, max_length, device, progress, seed, fit_mlm_head, mlm_head, cache_dir, tokenizer: As for
            :func:`head_importance_batches`; ``seed`` also seeds the random ranking and the resampling.
        n_boot: Bootstrap resamples of the task objective's intervals (at least 100).
        level: Their coverage.
        keep_predictions: Also return what the task head predicted at each step (task objective).

    Returns:
        One dict per (step, metric) with the keys of :data:`PRUNING_COLUMNS`: ``rank_by``,
        ``objective`` (the label, e.g. ``"mlm (fitted head)"``), ``heads_pruned_fraction``,
        ``heads_pruned``, ``metric``, ``value`` and ``pruned`` (location strings joined by ``;``).
        For the ``task`` objective ``ci_low``/``ci_high`` is the bootstrap interval of ``value`` over
        examples and ``delta`` (value minus the unpruned model's) has a paired interval
        (:mod:`tunescope.intervals`: predictions resampled, the model not re-run); the other
        objectives leave them NaN. With ``keep_predictions``: ``(rows, {heads_pruned: Predictions})``.

    Raises:
        InputError: ``step`` outside (0, 1), unknown ``scope``, plus what the objectives raise.
        UnknownNameError: Unknown ``rank_by`` or ``objective``.

    Example:
        >>> import numpy as np
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert", task="classifier")
        >>> ex = Examples(["good", "bad", "fine", "awful"], None, np.array([1, 0, 1, 0]), "d", "test", None)
        >>> rows = prune_curve(enc, ex, step=0.25, progress=False)
        >>> [r["heads_pruned"] for r in rows]
        [0, 2, 4, 6]
    """
    if rank_by != "random":
        _objective(rank_by, "rank_by")
    _objective(objective)
    check_interval_options(n_boot, level)
    if not 0 < step < 1:
        raise InputError(f"step must be in (0, 1), got {step}; e.g. 0.1 prunes 10% of the heads per step")
    if scope not in ("global", "layer"):
        raise UnknownNameError("scope", scope, ("global", "layer"))
    _check_common(batch_size, max_length)
    encoder = _prepare(model, examples, tokenizer, device)
    settings = _Settings(
        batch_size,
        max_length,
        seed,
        fit_mlm_head,
        None if cache_dir is None else Path(cache_dir),
        progress,
        metric,
        mlm_head,
    )
    eval_plan = OBJECTIVES[objective]._plan(encoder, examples, settings)
    rank_plan = None
    if rank_by != "random":
        rank_plan = (
            eval_plan if rank_by == objective else OBJECTIVES[rank_by]._plan(encoder, examples, settings)
        )
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    total = n_layers * n_heads
    typed_scope: Scope = "global" if scope == "global" else "layer"
    counts = _schedule(n_layers, n_heads, step, typed_scope, allow_empty_layers)
    alive = torch.ones(n_layers, n_heads, dtype=torch.bool)
    gates = torch.ones(n_layers, n_heads, dtype=_dtype(encoder), device=_device(encoder))
    scores: Tensor | None = None
    if rank_plan is None:
        gen = torch.Generator().manual_seed(seed)
        scores = torch.randperm(total, generator=gen).double().reshape(n_layers, n_heads)
    rows: list[dict[str, Any]] = []
    kept: dict[int, Predictions] = {}
    for count in track(counts, total=len(counts), description="pruning", enabled=progress):
        if count:
            if rank_plan is not None and (rescore or scores is None):
                scores = _score(encoder, rank_plan, alive.double(), True, False).scores
            assert scores is not None
            alive = _prune_more(scores, alive, count, typed_scope, allow_empty_layers)
            with torch.no_grad():
                gates.copy_(alive.to(gates.dtype))
        found: Predictions | None = None
        with HeadGates(encoder, gates):
            if eval_plan.predict is None:
                measured = eval_plan.evaluate()
            else:
                found = eval_plan.predict()
                scores_now = score(list(eval_plan.metrics), found.predictions, found.labels)
                measured = [(name, float(v)) for name, v in scores_now.items() if name != "n"]
        pruned = int((~alive).sum())
        if found is not None:
            kept[pruned] = found
        for name, value in measured:
            rows.append(
                {
                    "rank_by": rank_by,
                    "objective": eval_plan.label,
                    "heads_pruned_fraction": pruned / total,
                    "heads_pruned": pruned,
                    "metric": name,
                    "value": value,
                    **_curve_intervals(kept, pruned, name, n_boot, level, seed),
                    "pruned": _locations(alive),
                }
            )
    return (rows, kept) if keep_predictions else rows


def _curve_intervals(
    kept: dict[int, Predictions], pruned: int, metric: str, n_boot: int, level: float, seed: int
) -> dict[str, Any]:
    """A curve row's interval columns: the step's metric, and its paired difference from step 0."""
    nan = math.nan
    if pruned not in kept or 0 not in kept:  # the mlm and kl objectives keep no predictions
        return dict.fromkeys(("ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high"), nan) | {
            "n_boot": n_boot
        }
    now = kept[pruned].interval(metric, n_boot=n_boot, level=level, seed=seed)
    delta = kept[0].difference(kept[pruned], metric, n_boot=n_boot, level=level, seed=seed)
    return {
        "ci_low": now.low,
        "ci_high": now.high,
        "delta": delta.value,
        "delta_ci_low": delta.low,
        "delta_ci_high": delta.high,
        "n_boot": n_boot,
    }


# ------------------------------------------------------------------------------------------------
# coherence
# ------------------------------------------------------------------------------------------------
def _top(scores: np.ndarray, n: int, largest: bool) -> set[int]:
    order = np.argsort(-scores if largest else scores, kind="stable")
    return set(order[:n].tolist())


def _jaccard(a: np.ndarray, b: np.ndarray, n: int, largest: bool) -> float:
    sa, sb = _top(a, n, largest), _top(b, n, largest)
    return len(sa & sb) / len(sa | sb)


def _statistics(a: np.ndarray, b: np.ndarray, ks: Sequence[float]) -> list[float]:
    from scipy import stats

    with warnings.catch_warnings():  # a constant map has no rank correlation: NaN, said in the docs
        warnings.simplefilter("ignore")
        values = [float(stats.spearmanr(a, b).statistic), float(stats.kendalltau(a, b).statistic)]
    for k in ks:
        n = max(1, round(k * a.size))
        values += [_jaccard(a, b, n, True), _jaccard(a, b, n, False)]
    return values


def coherence(
    a: Tensor | HeadImportance,
    b: Tensor | HeadImportance,
    *,
    ks: Sequence[float] = (0.1, 0.25, 0.5),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    per_batch_a: HeadImportance | None = None,
    per_batch_b: HeadImportance | None = None,
    names: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """How much two head-importance maps agree: rank correlations and top/bottom-k overlap.

    Statistics over the ``n = n_layers * n_heads`` heads: Spearman's rho and Kendall's tau-b
    (``scipy.stats``; NaN for a constant map), and for each fraction ``k`` in ``ks`` the Jaccard index
    ``|A ∩ B| / |A ∪ B|`` of the ``max(1, round(k n))`` most important heads of each map (``top``) and of
    the least important (``bottom``); ties go to the lower flat index ``(layer - 1) * H + head``.

    Intervals are percentile bootstraps (``level`` coverage, ``n_boot`` resamples, seeded):

    - ``resampled="batches"`` when both maps come with per-batch sums (``per_batch_a`` and
      ``per_batch_b``, or ``a`` and ``b`` given as :class:`HeadImportance`) computed on the same
      batches: each resample draws batches with replacement, the *same* ones for both maps, and
      re-aggregates both maps (``batch_size=1``: resampling examples);
    - ``resampled="heads"`` otherwise: each resample draws heads with replacement (the same for both
      maps); this treats heads as exchangeable and says nothing about data noise.

    Args:
        a: ``(n_layers, n_heads)`` importance, or a :class:`HeadImportance` (its ``scores``).
        b: The other map, same shape.
        ks: Fractions in (0, 1] for the top/bottom-k overlaps.
        n_boot: Bootstrap resamples, >= 2.
        seed: Seed of the resampling.
        level: Interval coverage in (0, 1).
        per_batch_a: Per-batch sums behind ``a`` (default: ``a`` itself when it is a HeadImportance).
        per_batch_b: Per-batch sums behind ``b``.
        names: ``(map_a, map_b)`` for the table (default: the maps' labels, else ``"a"``, ``"b"``).

    The function is long (about 75 lines) because the statistics of the maps and of every bootstrap
    draw are computed by one loop over the same resampled indices, for both resampling schemes.

    Returns:
        One dict per statistic with the keys of :data:`COHERENCE_COLUMNS`; ``statistic`` is
        ``spearman``, ``kendall``, ``jaccard_top`` or ``jaccard_bottom``; ``k`` is NaN for the
        correlations.

    Raises:
        InputError: Shapes differ, bad ``ks``/``n_boot``/``level``, only one per-batch result given, or
            per-batch results from different batches.

    Example:
        >>> x = torch.arange(12.0).reshape(3, 4)
        >>> rows = coherence(x, x, n_boot=20)
        >>> [(r["statistic"], r["k"], round(r["value"], 6)) for r in rows][:3]
        [('spearman', nan, 1.0), ('kendall', nan, 1.0), ('jaccard_top', 0.1, 1.0)]
    """
    ks = tuple(float(k) for k in ks)
    if not ks or any(not 0 < k <= 1 for k in ks):
        raise InputError(f"ks must be fractions in (0, 1], got {ks}")
    if int(n_boot) < 2:
        raise InputError(f"n_boot must be at least 2, got {n_boot}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    if (per_batch_a is None) != (per_batch_b is None):
        raise InputError("give per-batch results for both maps (per_batch_a and per_batch_b) or for neither")
    if per_batch_a is None and isinstance(a, HeadImportance) and isinstance(b, HeadImportance):
        per_batch_a, per_batch_b = a, b
    map_a = a.scores if isinstance(a, HeadImportance) else torch.as_tensor(a)
    map_b = b.scores if isinstance(b, HeadImportance) else torch.as_tensor(b)
    if map_a.shape != map_b.shape or map_a.dim() != 2:
        raise InputError(
            f"the maps must share one (n_layers, n_heads) shape, got {tuple(map_a.shape)} "
            f"and {tuple(map_b.shape)}"
        )
    if names is None:
        names = (
            a.label if isinstance(a, HeadImportance) else "a",
            b.label if isinstance(b, HeadImportance) else "b",
        )
    x = map_a.detach().double().cpu().reshape(-1).numpy()
    y = map_b.detach().double().cpu().reshape(-1).numpy()
    estimate = _statistics(x, y, ks)
    rng = np.random.default_rng(seed)
    draws = []
    if per_batch_a is not None and per_batch_b is not None:
        if per_batch_a.batch_indices != per_batch_b.batch_indices:
            raise InputError(
                "per-batch results come from different batches; score both maps on the same examples with "
                "the same batch_size and max_length"
            )
        if per_batch_a.batch_sums.shape[1:] != map_a.shape:
            raise InputError("the per-batch results do not match the maps' shape")
        resampled, n_units = "batches", per_batch_a.n_batches
        for _ in range(n_boot):
            picked = torch.as_tensor(rng.integers(0, n_units, n_units))
            draws.append(
                _statistics(
                    per_batch_a.resampled(picked).reshape(-1).numpy(),
                    per_batch_b.resampled(picked).reshape(-1).numpy(),
                    ks,
                )
            )
    else:
        resampled = "heads"
        for _ in range(n_boot):
            heads = rng.integers(0, x.size, x.size)
            draws.append(_statistics(x[heads], y[heads], ks))
    samples = np.asarray(draws)
    tail = (1 - level) / 2
    labels = [("spearman", math.nan), ("kendall", math.nan)]
    for k in ks:
        labels += [("jaccard_top", k), ("jaccard_bottom", k)]
    rows = []
    for j, (statistic, k) in enumerate(labels):
        column = samples[:, j][~np.isnan(samples[:, j])]
        low, high = np.quantile(column, [tail, 1 - tail]).tolist() if column.size else (math.nan, math.nan)
        rows.append(
            {
                "map_a": names[0],
                "map_b": names[1],
                "statistic": statistic,
                "k": k,
                "value": estimate[j],
                "ci_low": float(low),
                "ci_high": float(high),
                "resampled": resampled,
                "n_boot": int(n_boot),
            }
        )
    return rows
