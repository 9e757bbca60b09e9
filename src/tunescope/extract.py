"""Every layer of an encoder for a set of texts: batched, length-bucketed, mask-aware, cached on disk.

One forward pass per batch gives all ``L + 1`` hidden states (``0`` = embedding output, ``1..L`` = the
transformer layers, Hugging Face's ``hidden_states`` indexing). Texts are tokenised once, sorted by length
and batched in that order, so a batch pads to the length of its own longest text instead of the corpus's;
the original order is restored before anything is returned.

Results can be cached in a folder: the cache key is the model's fingerprint, a hash of the inputs and the
extraction options. Work is written shard by shard (atomically, with a checksum), so an interrupted
extraction resumes from its completed shards, and a damaged shard is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tunescope._io import save_safetensors, sha256_file, write_json
from tunescope._progress import track
from tunescope.errors import CacheError, InputError, TokenizerMismatchError, UnknownNameError

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.models import Encoder

__all__ = ["Pooling", "WordPooling", "POOLINGS", "SENTENCE_POOLINGS", "Representations", "extract"]

logger = logging.getLogger(__name__)

Pooling = Literal["cls", "mean", "mean_no_special", "tokens"]
WordPooling = Literal["first", "mean"]
POOLINGS: dict[str, str] = {
    "cls": "the first token's vector (BERT's [CLS], RoBERTa's <s>)",
    "mean": "the mean over the non-padding tokens of each text, special tokens ([CLS], [SEP]) included",
    "mean_no_special": (
        "the mean over the non-padding tokens of each text other than the tokenizer's special tokens "
        "([CLS], [SEP], <s>, </s>), as Xie et al. (2022) pool; a text with no other token gets zeros"
    ),
    "tokens": "one vector per word: its first sub-token (word_pooling='first') or the mean of its sub-tokens",
}
_WORD_POOLINGS = get_args(WordPooling)
#: the poolings that give one row per example (``tokens`` gives one row per word)
SENTENCE_POOLINGS: tuple[str, ...] = tuple(name for name in POOLINGS if name != "tokens")
_CACHE_VERSION = "1"


@dataclass
class Representations(Mapping[int, torch.Tensor]):
    """Per-layer representations of one set of inputs: a mapping ``layer -> (n_rows, d_model)`` tensor.

    For the sentence poolings (``cls``, ``mean``, ``mean_no_special``) a row is an example; for ``tokens`` a
    row is a word, and ``example_index[r]`` / ``word_index[r]`` say which example and which word of it row
    ``r`` is.

    Attributes:
        tensors: layer index -> float tensor of shape (n_rows, d_model), on the CPU.
        pooling: how rows were pooled (a key of :data:`POOLINGS`).
        labels: one label per row (the example's label, or the word's label for ``tokens``), or None.
        example_index: (n_rows,) int64, only for ``tokens``.
        word_index: (n_rows,) int64, only for ``tokens``.
        meta: provenance (model name and fingerprint, data hash, options, cache key).
    """

    tensors: dict[int, torch.Tensor]
    pooling: str
    labels: np.ndarray | None = None
    example_index: torch.Tensor | None = None
    word_index: torch.Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, layer: int) -> torch.Tensor:
        try:
            return self.tensors[layer]
        except KeyError:
            raise InputError(
                f"layer {layer} was not extracted; available layers: {list(self.layers)}"
            ) from None

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def layers(self) -> tuple[int, ...]:
        """The extracted layer indices, ascending."""
        return tuple(sorted(self.tensors))

    @property
    def n_rows(self) -> int:
        """Number of rows (examples, or words for ``tokens``)."""
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    def constant_layers(self) -> tuple[int, ...]:
        """Layers whose rows are all the same vector (e.g. layer 0 under ``cls`` pooling, where every text
        starts with the same token at the same position): similarity and variance are undefined there."""
        return tuple(layer for layer, t in self.tensors.items() if t.shape[0] > 1 and bool((t == t[0]).all()))

    def select(self, layers: Sequence[int]) -> Representations:
        """A view with only ``layers`` (same rows, labels and provenance)."""
        tensors = {layer: self[layer] for layer in layers}
        return Representations(
            tensors, self.pooling, self.labels, self.example_index, self.word_index, self.meta
        )

    def stack(self) -> torch.Tensor:
        """All layers as one (n_layers, n_rows, d_model) tensor, layers ascending."""
        return torch.stack([self.tensors[layer] for layer in self.layers])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to a safetensors file (atomically); :meth:`load` reads it back."""
        tensors = {f"layer.{layer}": t.contiguous() for layer, t in self.tensors.items()}
        if self.example_index is not None and self.word_index is not None:
            tensors["example_index"] = self.example_index
            tensors["word_index"] = self.word_index
        metadata = {**self.meta, "pooling": self.pooling}
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.dtype.kind not in "iufb":  # strings: store codes, names in the metadata
                names, labels = np.unique(labels.astype(str), return_inverse=True)
                metadata["label_names"] = json.dumps(names.tolist())
            tensors["labels"] = torch.from_numpy(np.array(labels, copy=True))
        save_safetensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Representations:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CacheError(
                f"cannot read representations from {path}: {err}; delete it and extract again"
            ) from err
        layers = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("layer.")}
        labels = tensors["labels"].numpy() if "labels" in tensors else None
        if labels is not None and "label_names" in metadata:
            labels = np.asarray(json.loads(metadata.pop("label_names")))[labels]
        pooling = metadata.pop("pooling", "")
        return cls(layers, pooling, labels, tensors.get("example_index"), tensors.get("word_index"), metadata)


@dataclass
class _Tokenized:
    """One example after tokenisation (no padding)."""

    input_ids: torch.Tensor  # (n_tokens,) int64
    token_type_ids: torch.Tensor | None
    word_of_token: list[int] | None  # tokens pooling: word number of each token, -1 for special tokens
    n_words: int
    special: torch.Tensor | None = None  # (n_tokens,) bool: the tokenizer's special tokens ([CLS], [SEP])


def extract(
    encoder: Encoder,
    texts: Sequence[str] | Examples,
    *,
    pooling: Pooling | str = "mean",
    layers: Sequence[int] | None = None,
    text_pairs: Sequence[str] | None = None,
    labels: Sequence[Any] | np.ndarray | None = None,
    words: Sequence[Sequence[str]] | None = None,
    word_labels: Sequence[Sequence[Any]] | None = None,
    word_pooling: WordPooling | str = "first",
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 1024,
    sort_by_length: bool = True,
    progress: bool = True,
) -> Representations:
    """Run the encoder over ``texts`` once and pool every requested layer.

    Args:
        encoder: what :func:`tunescope.load_encoder` (or ``load_classifier``) returns.
        texts: the texts, or an :class:`~tunescope.data.Examples` (its pairs and labels are used too).
        pooling: a key of :data:`POOLINGS`: ``cls`` (the first token), ``mean`` (over the non-padding
            tokens, special ones included), ``mean_no_special`` (over the non-padding tokens other than
            the tokenizer's special tokens, as Xie et al. 2022 pool) or ``tokens`` (one row per word).
        layers: which of ``0..L`` to keep (default all).
        text_pairs: second segments for sentence-pair inputs (same length as ``texts``).
        labels: one label per example; carried into :attr:`Representations.labels`.
        words: pre-split words per example for ``tokens`` (default: whitespace split of each text).
        word_labels: one label per word for ``tokens`` (e.g. POS tags), aligned with ``words``.
        word_pooling: ``first`` sub-token (default) or ``mean`` of sub-tokens, for ``tokens``.
        batch_size: examples per forward pass.
        max_length: truncate inputs to this many tokens (default: the model's limit).
        device: move the model here first (default: where the model already is).
        dtype: dtype of the returned tensors. The forward pass runs in the model's own dtype.
        cache_dir: folder for the shard cache; None disables caching.
        shard_size: examples per cache shard (the unit of resumption).
        sort_by_length: batch texts of similar length together (default). False keeps arrival order,
            which pads every batch to its longest text: slower, only useful as a baseline.
        progress: show a progress bar on stderr.

    Returns:
        Representations with, for each layer, a (n_examples, d_model) tensor (sentence poolings) or a
        (n_words, d_model) tensor (``tokens``), rows in the input order.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> encoder = tiny_model("bert")
        >>> reps = extract(encoder, ["a short text", "another one"], pooling="mean", progress=False)
        >>> reps.layers, tuple(reps[2].shape)
        ((0, 1, 2), (2, 32))
    """
    if pooling not in POOLINGS:
        raise UnknownNameError("pooling", str(pooling), POOLINGS)
    if word_pooling not in _WORD_POOLINGS:
        raise UnknownNameError("word pooling", str(word_pooling), _WORD_POOLINGS)
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch_size and shard_size must be positive (got {batch_size}, {shard_size})")
    texts, text_pairs, labels = _unpack(texts, text_pairs, labels)
    word_lists: list[list[str]] | None = None
    if pooling == "tokens":
        word_lists = [list(w) for w in words] if words is not None else [t.split() for t in texts]
        _check_words(word_lists, word_labels, texts)
    elif words is not None or word_labels is not None:
        raise InputError("words/word_labels are only used with pooling='tokens'")

    model = encoder.model
    if device is not None:
        torch.nn.Module.to(model, torch.device(device))
    n_layers = encoder.num_layers
    wanted = _check_layers(layers, n_layers)
    limit = _max_length(encoder, max_length)
    items = _tokenize(encoder, texts, text_pairs, word_lists, limit)

    # longest first: a batch that does not fit in memory fails at once, not at the end
    order = list(range(len(items)))
    if sort_by_length:
        order.sort(key=lambda i: (-len(items[i].input_ids), i))
    options = {
        "pooling": str(pooling),
        "word_pooling": str(word_pooling) if pooling == "tokens" else "",
        "layers": ",".join(map(str, wanted)),
        "max_length": str(limit),
        "dtype": str(dtype).removeprefix("torch."),
        "sorted": str(sort_by_length),
    }
    key = _cache_key(encoder.fingerprint, _data_hash(texts, text_pairs, word_lists), options)
    shards = [order[s : s + shard_size] for s in range(0, len(order), shard_size)]
    cache = _ShardCache(Path(cache_dir) / key[:24], key, len(shards)) if cache_dir is not None else None

    base = encoder.adapter.base_model(model)
    accepted = set(inspect.signature(base.forward).parameters)
    run_device = next(model.parameters()).device
    plan = list(_batches(shards, batch_size, cache))
    cached = sum(1 for _, ids, _ in plan if ids is None)
    if cache is not None and 0 < cached < len(shards):
        logger.info("resuming extraction: %d of %d shards already in %s", cached, len(shards), cache.folder)
    batches = track(plan, total=len(plan), description="extracting", enabled=progress)

    results: dict[int, dict[str, torch.Tensor]] = {}
    current: tuple[int, list[dict[str, torch.Tensor]]] | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for shard_id, batch_ids, last in batches:
                if batch_ids is None:  # shard served from the cache
                    assert cache is not None
                    results[shard_id] = cache.read(shard_id)
                    continue
                if current is None or current[0] != shard_id:
                    current = (shard_id, [])
                inputs = _collate([items[i] for i in batch_ids], encoder, accepted, run_device)
                hidden = base(**inputs, output_hidden_states=True, return_dict=True).hidden_states
                if len(hidden) != n_layers + 1:
                    raise InputError(f"model returned {len(hidden)} hidden states, expected {n_layers + 1}")
                pooled = _pool(
                    hidden,
                    wanted,
                    inputs["attention_mask"],
                    pooling,
                    word_pooling,
                    [items[i] for i in batch_ids],
                    dtype,
                )
                batch_order = torch.tensor(batch_ids, dtype=torch.int64)
                if pooling == "tokens":  # batch-local positions -> example ids
                    pooled["example_index"] = batch_order[pooled.pop("batch_pos").cpu()]
                else:
                    pooled["order"] = batch_order
                current[1].append(pooled)
                if last:
                    shard = {k: torch.cat([p[k] for p in current[1]]).cpu() for k in current[1][0]}
                    if cache is not None:
                        cache.write(shard_id, shard)
                    results[shard_id] = shard
                    current = None
    finally:
        model.train(was_training)

    reps = _assemble(results, wanted, pooling, len(items))
    meta = {"model": encoder.name, "fingerprint": encoder.fingerprint, "cache_key": key, **options}
    reps.meta.update(meta)
    _attach_labels(reps, labels, word_labels)
    return reps


# --- input checking -------------------------------------------------------------------------------------


def _unpack(
    texts: Sequence[str] | Examples, text_pairs: Sequence[str] | None, labels: Any
) -> tuple[list[str], list[str] | None, np.ndarray | None]:
    from tunescope.data import Examples

    if isinstance(texts, Examples):
        text_pairs = texts.text_pairs if text_pairs is None else text_pairs
        labels = texts.labels if labels is None else labels
        texts = texts.texts
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise InputError("no texts to extract: pass at least one text")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
    if text_pairs is not None:
        text_pairs = list(text_pairs)
        if len(text_pairs) != len(texts):
            raise InputError(f"{len(text_pairs)} text pairs for {len(texts)} texts: give one pair per text")
    label_array = None if labels is None else np.asarray(labels)
    if label_array is not None and len(label_array) != len(texts):
        raise InputError(f"{len(label_array)} labels for {len(texts)} texts: give one label per text")
    return texts, text_pairs, label_array


def _check_words(
    words: list[list[str]], word_labels: Sequence[Sequence[Any]] | None, texts: list[str]
) -> None:
    if len(words) != len(texts):
        raise InputError(f"{len(words)} word lists for {len(texts)} texts: give one word list per text")
    if word_labels is None:
        return
    if len(word_labels) != len(words):
        raise InputError(f"{len(word_labels)} word-label lists for {len(words)} examples")
    for i, (w, lab) in enumerate(zip(words, word_labels, strict=True)):
        if len(w) != len(lab):
            raise InputError(
                f"example {i} has {len(w)} words but {len(lab)} word labels: labels must align with words"
            )


def _check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers + 1))
    wanted = sorted(set(int(x) for x in layers))
    bad = [x for x in wanted if not 0 <= x <= n_layers]
    if bad or not wanted:
        raise InputError(f"layers {bad or '[]'} out of range: this model has layers 0..{n_layers}")
    return wanted


def _max_length(encoder: Encoder, max_length: int | None) -> int:
    config = encoder.model.config
    limit = int(min(getattr(encoder.tokenizer, "model_max_length", 512) or 512, 10**6))
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style position ids start after the padding index
        offset = (config.pad_token_id + 1) if config.model_type in {"roberta", "xlm-roberta", "mpnet"} else 0
        limit = min(limit, int(positions) - int(offset or 0))
    if max_length is not None:
        if max_length < 2:
            raise InputError(f"max_length must be at least 2 (got {max_length})")
        limit = min(limit, max_length)
    return limit


# --- tokenisation and batching ----------------------------------------------------------------------------


def _tokenize(
    encoder: Encoder,
    texts: list[str],
    pairs: list[str] | None,
    words: list[list[str]] | None,
    max_length: int,
) -> list[_Tokenized]:
    tokenizer = encoder.tokenizer
    first: Any = words if words is not None else texts
    second: Any = [p.split() for p in pairs] if (pairs is not None and words is not None) else pairs
    enc = tokenizer(
        first,
        second,
        is_split_into_words=words is not None,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_special_tokens_mask=True,
    )
    embeddings = cast(torch.nn.Embedding, encoder.model.get_input_embeddings())
    vocab = int(embeddings.weight.shape[0])
    top = max((max(ids) for ids in enc["input_ids"] if ids), default=0)
    if top >= vocab:
        raise TokenizerMismatchError(
            f"the tokenizer produced token id {top} but the model's embedding table has {vocab} rows: "
            "load the tokenizer that was saved with this model"
        )
    type_ids = enc.get("token_type_ids")
    special = enc.get("special_tokens_mask")
    items = []
    for i, ids in enumerate(enc["input_ids"]):
        word_of_token = None
        n_words = 0
        if words is not None:
            word_of_token, n_words = _word_numbers(enc, i, len(words[i]))
        items.append(
            _Tokenized(
                torch.tensor(ids, dtype=torch.long),
                None if type_ids is None else torch.tensor(type_ids[i], dtype=torch.long),
                word_of_token,
                n_words,
                None if special is None else torch.tensor(special[i], dtype=torch.bool),
            )
        )
    return items


def _word_numbers(enc: Any, i: int, n_first: int) -> tuple[list[int], int]:
    """Word number of each token (second-segment words numbered after the first's), -1 for specials."""
    word_ids = enc.word_ids(i)
    sequence_ids = enc.sequence_ids(i)
    numbers = []
    for w, s in zip(word_ids, sequence_ids, strict=True):
        numbers.append(-1 if w is None else w + (n_first if s == 1 else 0))
    return numbers, max(numbers, default=-1) + 1


def _batches(
    shards: list[list[int]], batch_size: int, cache: _ShardCache | None
) -> Iterator[tuple[int, list[int] | None, bool]]:
    """Yield (shard id, example ids or None when cached, is last batch of the shard)."""
    for shard_id, ids in enumerate(shards):
        if cache is not None and cache.has(shard_id):
            yield shard_id, None, True
            continue
        for start in range(0, len(ids), batch_size):
            yield shard_id, ids[start : start + batch_size], start + batch_size >= len(ids)


def _collate(
    items: list[_Tokenized], encoder: Encoder, accepted: set[str], device: torch.device
) -> dict[str, torch.Tensor]:
    from torch.nn.utils.rnn import pad_sequence

    pad = encoder.tokenizer.pad_token_id
    input_ids = pad_sequence([it.input_ids for it in items], batch_first=True, padding_value=int(pad or 0))
    lengths = torch.tensor([len(it.input_ids) for it in items])
    mask = (torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
    batch = {"input_ids": input_ids, "attention_mask": mask}
    types = [it.token_type_ids for it in items]
    if "token_type_ids" in accepted and all(t is not None for t in types):
        batch["token_type_ids"] = pad_sequence(types, batch_first=True, padding_value=0)  # type: ignore[arg-type]
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --- pooling ------------------------------------------------------------------------------------------------


def _pool(
    hidden: tuple[torch.Tensor, ...],
    layers: list[int],
    mask: torch.Tensor,
    pooling: str,
    word_pooling: str,
    items: list[_Tokenized],
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if pooling == "cls":
        for layer in layers:
            out[f"layer.{layer}"] = hidden[layer][:, 0].to(dtype)
    elif pooling == "mean":
        out.update(_masked_mean(hidden, layers, mask, dtype))
    elif pooling == "mean_no_special":
        out.update(_masked_mean(hidden, layers, mask * _ordinary_tokens(items, mask), dtype))
    else:
        out.update(_pool_words(hidden, layers, items, word_pooling, dtype))
    return out  # still on the model's device: moved to the CPU once per shard


def _masked_mean(
    hidden: tuple[torch.Tensor, ...], layers: list[int], mask: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Each row's mean over the positions where ``mask`` (batch, seq) is 1; zeros where it has none."""
    weights = mask.unsqueeze(-1).to(hidden[0].dtype)
    counts = mask.sum(1, keepdim=True).clamp_min(1).to(torch.float32)
    out = {}
    for layer in layers:
        summed = (hidden[layer] * weights).sum(1, dtype=torch.float32)
        out[f"layer.{layer}"] = (summed / counts).to(dtype)
    return out


def _ordinary_tokens(items: list[_Tokenized], mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) 1 for the tokens that are not special ([CLS], [SEP], ...), 0 for special and padding."""
    from torch.nn.utils.rnn import pad_sequence

    if any(it.special is None for it in items):
        raise InputError("this tokenizer gives no special-tokens mask, so mean_no_special is unavailable")
    ordinary = pad_sequence(
        [~it.special for it in items if it.special is not None], batch_first=True, padding_value=False
    )
    return ordinary.to(device=mask.device, dtype=mask.dtype)


def _pool_words(
    hidden: tuple[torch.Tensor, ...],
    layers: list[int],
    items: list[_Tokenized],
    word_pooling: str,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Gather one row per word: the first sub-token's vector, or the mean over its sub-tokens."""
    width = hidden[0].shape[1]
    flat_token, flat_row, example_of_row, word_of_row = [], [], [], []
    row = 0
    for b, it in enumerate(items):
        assert it.word_of_token is not None
        row_of_word: dict[int, int] = {}
        for pos, w in enumerate(it.word_of_token):
            if w < 0 or (word_pooling == "first" and w in row_of_word):
                continue
            if w not in row_of_word:
                row_of_word[w] = row
                example_of_row.append(b)
                word_of_row.append(w)
                row += 1
            flat_token.append(b * width + pos)
            flat_row.append(row_of_word[w])
    tokens = torch.tensor(flat_token, dtype=torch.long, device=hidden[0].device)
    rows = torch.tensor(flat_row, dtype=torch.long, device=hidden[0].device)
    counts = torch.bincount(rows, minlength=row).clamp_min(1).to(torch.float32).unsqueeze(1)
    out = {}
    for layer in layers:
        vectors = hidden[layer].reshape(-1, hidden[layer].shape[-1]).index_select(0, tokens).to(torch.float32)
        summed = torch.zeros((row, vectors.shape[1]), dtype=torch.float32, device=vectors.device)
        summed.index_add_(0, rows, vectors)
        out[f"layer.{layer}"] = (summed / counts).to(dtype)
    # batch-local example position; extract() maps it to the example id
    out["batch_pos"] = torch.tensor(example_of_row, dtype=torch.long)
    out["word_index"] = torch.tensor(word_of_row, dtype=torch.long)
    return out


def _assemble(
    shards: dict[int, dict[str, torch.Tensor]], layers: list[int], pooling: str, n_examples: int
) -> Representations:
    parts = [shards[k] for k in sorted(shards)]
    if pooling != "tokens":
        order = torch.cat([p["order"] for p in parts])
        tensors = {}
        for layer in layers:
            rows = torch.cat([p[f"layer.{layer}"] for p in parts])
            result = torch.empty_like(rows)
            result[order] = rows
            tensors[layer] = result
        return Representations(tensors, pooling)
    example = torch.cat([p["example_index"] for p in parts])
    word = torch.cat([p["word_index"] for p in parts])
    max_words = int(word.max().item()) + 1 if word.numel() else 1
    perm = torch.argsort(example * max_words + word)
    tensors = {layer: torch.cat([p[f"layer.{layer}"] for p in parts])[perm] for layer in layers}
    return Representations(tensors, pooling, example_index=example[perm], word_index=word[perm])


def _attach_labels(
    reps: Representations, labels: np.ndarray | None, word_labels: Sequence[Sequence[Any]] | None
) -> None:
    if reps.pooling != "tokens":
        reps.labels = labels
        return
    assert reps.example_index is not None and reps.word_index is not None
    examples, word_ids = reps.example_index.numpy(), reps.word_index.numpy()
    if word_labels is not None:
        reps.labels = np.asarray([word_labels[e][w] for e, w in zip(examples, word_ids, strict=True)])
    elif labels is not None:
        reps.labels = labels[examples]


# --- cache --------------------------------------------------------------------------------------------------


def _data_hash(texts: list[str], pairs: list[str] | None, words: list[list[str]] | None) -> str:
    digest = hashlib.sha256()
    for part in (texts, pairs, words):
        digest.update(json.dumps(part, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _cache_key(fingerprint: str, data_hash: str, options: dict[str, str]) -> str:
    payload = json.dumps(
        {"v": _CACHE_VERSION, "model": fingerprint, "data": data_hash, **options}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class _ShardCache:
    """Shards of one extraction in a folder, each checked against the checksum in ``index.json``."""

    def __init__(self, folder: Path, key: str, n_shards: int) -> None:
        self.folder, self.key, self.n_shards = folder, key, n_shards
        self.index_path = folder / "index.json"
        self.checksums: dict[str, str] = {}
        if self.index_path.exists():
            try:
                index = json.loads(self.index_path.read_text())
                if index.get("key") == key and index.get("n_shards") == n_shards:
                    self.checksums = dict(index.get("shards", {}))
            except (OSError, ValueError):
                logger.warning("extraction cache index %s is unreadable; recomputing", self.index_path)

    def _path(self, shard_id: int) -> Path:
        return self.folder / f"shard-{shard_id:05d}.safetensors"

    def has(self, shard_id: int) -> bool:
        expected = self.checksums.get(str(shard_id))
        path = self._path(shard_id)
        if expected is None or not path.exists():
            return False
        if sha256_file(path) != expected:
            logger.warning("cache shard %s does not match its checksum; recomputing it", path)
            return False
        return True

    def read(self, shard_id: int) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self._path(shard_id)))
        except (SafetensorError, OSError) as err:  # checked a moment ago; a race with another process
            raise CacheError(f"cache shard {self._path(shard_id)} became unreadable: {err}; rerun") from err

    def write(self, shard_id: int, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(shard_id)
        save_safetensors({k: v.contiguous() for k, v in tensors.items()}, path, {"key": self.key})
        self.checksums[str(shard_id)] = sha256_file(path)
        write_json(self.index_path, {"key": self.key, "n_shards": self.n_shards, "shards": self.checksums})
