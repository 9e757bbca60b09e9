"""Fine-tuning: full, selected layers, classifier at layer k, or LoRA adapters; resumable per epoch.

:func:`finetune` trains a sequence classifier or regressor (``AutoModelForSequenceClassification``)
on a task's :class:`~tunescope.data.Examples`, or a tagger (``AutoModelForTokenClassification``) on
:class:`~tunescope.data.tokens.TokenExamples`, and writes a plain Hugging Face folder.

The loop is short on purpose: ``torch.optim.AdamW`` (Loshchilov & Hutter, 2019; no decay on biases
and LayerNorm weights), ``transformers.get_linear_schedule_with_warmup`` and gradient clipping at 1.0,
the recipe of Devlin et al. (2019) and of transformers' ``Trainer``. ``Trainer`` itself is not used: it
checkpoints by step, pulls in ``datasets``/``accelerate`` machinery, and its resume restores data order
only approximately; here a checkpoint is one *epoch* (model, optimizer, scheduler, RNG), the shuffle of
epoch ``e`` depends only on ``(seed, e)``, so a resumed run ends with the same weights as an
uninterrupted one.

Options (see :class:`FinetuneConfig`):

* ``train_layers``: only these transformer layers (1..L) and the classifier head train; embeddings and
  the other layers stay frozen (Lee et al., 2019, "What would Elsa do? Freezing layers during
  transformer fine-tuning").
* ``classifier_layer=k``: the model is cut after layer ``k`` and the head sits on top of it; the saved
  folder has ``num_hidden_layers = k`` (Merchant et al., 2020, "What happens to BERT embeddings during
  fine-tuning?", probe and fine-tune partial models the same way).
* ``adapter="lora"``: LoRA (Hu et al., 2022) through peft on the attention and FFN linears of the
  chosen layers; the head trains fully (peft ``modules_to_save``); the adapters are merged into the
  weights before saving, so plain transformers loads the folder.

Layout of ``out/`` while training::

    out/checkpoints/run.json              what this run is (its key); a rerun must match it
    out/checkpoints/epoch-N/              trainable.safetensors, trainer_state.pt, state.json
    out/config.json, model.safetensors,   the final model (written at the end)
    tokenizer files
    out/tunescope_finetune.json           config, history, metric, timings: written last

Each ``epoch-N`` folder is written to a temporary folder and renamed, so it is complete or absent; only
the latest and the best epoch are kept, and ``checkpoints/`` is removed once the final model is saved.

Files damaged on disk afterwards (a full disk, a cut copy, a hand edit) never end a rerun in a traceback,
and each is named in a warning (``logging``, which the CLI prints on stderr):

* a damaged ``trainable.safetensors``, ``trainer_state.pt`` or ``state.json`` makes its checkpoint
  unusable, and so does a checkpoint whose best epoch's weights are unusable (the final model is the
  best epoch's): it is skipped, training resumes from the newest usable checkpoint, or from the start if
  there is none, and ends with the weights an uninterrupted run ends with. Usable checkpoints are kept.
* a damaged ``checkpoints/run.json`` is rewritten: the ``state.json`` of each checkpoint names its run
  too, so the checkpoints of this run are still used, and checkpoints of another run still refuse
  ``out``.
* a damaged ``tunescope_finetune.json`` (or final ``model.safetensors``) means the run cannot be shown
  to be finished: it is trained again (resuming from checkpoints if any are left) and its files in
  ``out`` are replaced, the same as an interrupted run's. The record is only trusted, and ``out`` only
  refused as another run's, when the record can be read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import transformers
from torch import nn

from tunescope import inference as _m
from tunescope._io import apply_umask, atomic_dir, save_safetensors, temp_dir, write_json
from tunescope._progress import track
from tunescope.data.examples import Examples
from tunescope.data.task import Task
from tunescope.data.tokens import TokenExamples
from tunescope.errors import (
    CacheError,
    DataError,
    InputError,
    MissingExtraError,
    UnknownNameError,
    UnsupportedArchitectureError,
)
from tunescope.metrics import score
from tunescope.models.adapters import ArchitectureAdapter, get_adapter
from tunescope.models.loading import (
    _CONFIG_ERRORS,
    _TORCH_LOAD_ERRORS,
    Encoder,
    _damaged_weights,
    _safetensors_problem,
    _torch_load_problem,
    default_model_path,
    load_classifier,
    load_encoder,
)

if TYPE_CHECKING:
    from tunescope.inference import HeadKind

__all__ = ["ADAPTER_METHODS", "FinetuneConfig", "FinetuneResult", "finetune"]

logger = logging.getLogger(__name__)

ADAPTER_METHODS: dict[str, str] = {
    "lora": "LoRA (Hu et al., 2022): trainable low-rank updates B A on frozen linears, via peft",
}
"""Parameter-efficient methods :attr:`FinetuneConfig.adapter` accepts, with what each does."""

RESULT_FILE = "tunescope_finetune.json"
_FORMAT = 1
_CHECKPOINTS = "checkpoints"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_AUTO: dict[str, Any] = {
    "sequence": transformers.AutoModelForSequenceClassification,
    "token": transformers.AutoModelForTokenClassification,
}
_HEAD_SUFFIX = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}


# ------------------------------------------------------------------------------------------------
# config and result
# ------------------------------------------------------------------------------------------------
def _layer_tuple(value: Any, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | str):
        raise InputError(f"{name} must be a sequence of layer numbers such as (4, 5, 6), got {value!r}")
    try:
        layers = tuple(sorted({int(v) for v in value}))
    except (TypeError, ValueError):
        raise InputError(f"{name} must hold whole layer numbers, got {value!r}") from None
    return layers


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune: optimisation, which parameters train, evaluation and model selection.

    Attributes:
        epochs: Passes over the training data.
        learning_rate: Peak learning rate of AdamW (reached after warm-up, then linear decay to 0).
        batch_size: Training examples per step.
        warmup_ratio: Fraction of all steps spent warming the learning rate up linearly from 0.
        weight_decay: AdamW decoupled weight decay, applied to weight matrices only (not to biases
            and LayerNorm weights).
        max_length: Inputs are truncated to this many tokens.
        seed: Seeds the head's initialisation, LoRA's, dropout and the shuffling.
        train_layers: ``None``: every parameter trains. Else only these transformer layers (1..L, or
            1..k with ``classifier_layer``) plus the classifier head train; embeddings and the other
            layers are frozen. ``()`` trains the head alone.
        classifier_layer: Cut the model after layer ``k`` (keep layers 1..k) and put the head on top.
        adapter: ``"lora"`` (see :data:`ADAPTER_METHODS`) or ``None``.
        lora_r: LoRA rank ``r``.
        lora_alpha: LoRA scale numerator (updates are scaled by ``lora_alpha / lora_r``).
        adapter_layers: Layers that get adapters (``None``: all).
        eval_each_epoch: Evaluate on the validation split after every epoch (else after the last).
        keep_best: Save the epoch with the best validation metric, not the last one.
        max_grad_norm: Gradients are clipped to this global L2 norm.
    """

    epochs: int = 1
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 0
    train_layers: tuple[int, ...] | None = None
    classifier_layer: int | None = None
    adapter: Literal["lora"] | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    adapter_layers: tuple[int, ...] | None = None
    eval_each_epoch: bool = True
    keep_best: bool = True
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_layers", _layer_tuple(self.train_layers, "train_layers"))
        object.__setattr__(self, "adapter_layers", _layer_tuple(self.adapter_layers, "adapter_layers"))
        checks = (  # the option's name, and the command-line flag that sets it
            ("epochs", self.epochs >= 1, "at least 1 (--epochs)"),
            ("learning_rate", self.learning_rate > 0, "positive (--lr)"),
            ("batch_size", self.batch_size >= 1, "at least 1 (--batch-size)"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1) (--warmup-ratio)"),
            ("weight_decay", self.weight_decay >= 0, "at least 0"),
            ("max_length", self.max_length >= 2, "at least 2 (--max-length)"),
            ("lora_r", self.lora_r >= 1, "at least 1 (--lora-r)"),
            ("lora_alpha", self.lora_alpha > 0, "positive"),
            ("max_grad_norm", self.max_grad_norm > 0, "positive"),
        )
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"{name} must be {want}, got {getattr(self, name)!r}")
        if self.classifier_layer is not None and int(self.classifier_layer) < 1:
            raise InputError(
                f"classifier_layer must be a transformer layer (>= 1), got {self.classifier_layer}"
            )
        if self.adapter is not None and self.adapter not in ADAPTER_METHODS:
            raise UnknownNameError("adapter", str(self.adapter), ADAPTER_METHODS)
        if self.adapter is None and self.adapter_layers is not None:
            raise InputError("adapter_layers needs an adapter; pass adapter='lora' (--adapter lora)")
        if self.adapter is not None and self.train_layers is not None:
            raise InputError(
                "train_layers and an adapter do not combine; choose the adapter's layers with adapter_layers"
            )


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did and where the model is.

    Attributes:
        path: The output folder, loadable with ``AutoModelForSequenceClassification.from_pretrained``
            (``AutoModelForTokenClassification`` for token tasks) and :func:`tunescope.load_classifier`.
        history: One dict per epoch: ``epoch``, ``train_loss`` (batch losses averaged, weighted by
            batch size), the validation metrics (when evaluated), ``seconds`` (training) and
            ``eval_seconds``.
        best_epoch: The epoch whose weights were saved.
        metric: The task's primary metric.
        best_value: Its validation value at ``best_epoch`` (NaN if never evaluated).
        train_seconds: Training time summed over epochs (evaluation excluded).
        trainable_parameters: Parameters that received gradients.
        total_parameters: All parameters of the trained model (LoRA: including adapters).
    """

    path: Path
    history: list[dict[str, Any]]
    best_epoch: int
    metric: str
    best_value: float
    train_seconds: float
    trainable_parameters: int
    total_parameters: int
    config: FinetuneConfig = field(default_factory=FinetuneConfig)


# ------------------------------------------------------------------------------------------------
# what the task and the data say
# ------------------------------------------------------------------------------------------------
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


def _labels(
    task: Task | None, train: Examples | TokenExamples, validation: Examples | TokenExamples
) -> _Labels:
    kind = _m.data_kind(train)
    if _m.data_kind(validation) != kind:
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


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
def _checkpoint_head(ref: str | os.PathLike[str] | None) -> tuple[str | None, int, str | None]:
    """(head kind, num_labels, problem_type) of a checkpoint's saved task head; kind ``None``: base."""
    try:
        folder = default_model_path() if ref is None else ref
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = transformers.AutoConfig.from_pretrained(os.fspath(folder))
    except _CONFIG_ERRORS:  # missing, unreachable or damaged: the loader below says so in one line
        return None, 0, None
    for kind, suffix in _HEAD_SUFFIX.items():
        if any(str(a).endswith(suffix) for a in (getattr(config, "architectures", None) or [])):
            return kind, int(config.num_labels), getattr(config, "problem_type", None)
    return None, 0, None


def _mismatch_fix(labels: _Labels) -> str:
    need = "one output (regression)" if labels.regression else f"{labels.num_labels} labels"
    return (
        f"pick a task with that head, or start from the base model (a checkpoint without a classifier "
        f"head, or tunescope.load_encoder(...)) so a fresh head with {need} is made"
    )


def _wrap_base(base: transformers.PreTrainedModel, labels: _Labels) -> transformers.PreTrainedModel:
    """A task model of ``labels.kind`` whose encoder weights are ``base``'s and whose head is fresh."""
    config: Any = copy.deepcopy(base.config)
    config.num_labels = labels.num_labels
    config.problem_type = labels.problem_type
    model = _AUTO[labels.kind].from_config(config)
    model.to(dtype=base.dtype)
    inner = get_adapter(model).base_model(model)
    missing, unexpected = inner.load_state_dict(base.state_dict(), strict=False)
    # poolers are part of the head: a base model may have one the task model lacks, and vice versa
    stray = [k for k in (*missing, *unexpected) if not k.startswith("pooler.")]
    if stray:
        raise UnsupportedArchitectureError(
            f"could not put a {labels.kind} head on {type(base).__name__}: weights {stray[:3]} do not match"
        )
    return model


def _prepare_model(model: str | os.PathLike[str] | Encoder | None, labels: _Labels, seed: int) -> Encoder:
    """Load or copy the starting task model, seeding any freshly initialised head."""
    auto = _AUTO[labels.kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, Encoder):
            name = model.name
            have = _m.head_kind(model.model)
            if have is None:
                task_model = _wrap_base(model.model, labels)
            elif have != labels.kind:
                raise InputError(
                    f"{name} has a {have}-level head but the task needs a {labels.kind}-level one; "
                    "start from the base model (tunescope.load_encoder) so a fresh head is made"
                )
            else:
                if hasattr(model.model, "get_base_model"):
                    raise InputError(f"{name} is a peft model; merge its adapters (merge_and_unload) first")
                existing: Any = model.model.config
                _m.check_head(
                    int(existing.num_labels),
                    getattr(existing, "problem_type", None),
                    regression=labels.regression,
                    n_classes=None if labels.regression else labels.num_labels,
                    what=name,
                    fix=_mismatch_fix(labels),
                )
                task_model = copy.deepcopy(model.model)
            encoder = Encoder(
                task_model, model.tokenizer, get_adapter(task_model), name=name, path=model.path
            )
        else:
            saved, num_labels, problem_type = _checkpoint_head(model)
            what = "the embedded model" if model is None else os.fspath(model)
            if saved == labels.kind:
                _m.check_head(
                    num_labels,
                    problem_type,
                    regression=labels.regression,
                    n_classes=None if labels.regression else labels.num_labels,
                    what=what,
                    fix=_mismatch_fix(labels),
                )
            if labels.kind == "sequence":
                encoder = load_classifier(
                    model, num_labels=labels.num_labels, problem_type=labels.problem_type
                )
            elif saved == "token":
                from tunescope.models.loading import _load

                encoder = _load(
                    model,
                    auto,
                    device="cpu",
                    dtype=None,
                    attn_implementation=None,
                    config_overrides={},
                    model_kwargs={},
                )
            else:
                base = load_encoder(model)
                encoder = Encoder(
                    _wrap_base(base.model, labels),
                    base.tokenizer,
                    base.adapter,
                    name=base.name,
                    path=base.path,
                )
    config: Any = encoder.model.config
    config.problem_type = labels.problem_type
    if labels.names is not None:
        config.id2label = dict(enumerate(labels.names))
        config.label2id = {n: i for i, n in enumerate(labels.names)}
    return encoder


def _check_layers(
    values: Sequence[int] | None, n_layers: int, option: str, adapter: ArchitectureAdapter
) -> None:
    if not values:
        return
    bad = [v for v in values if not 1 <= v <= n_layers]
    if bad:
        raise InputError(
            f"{option} {bad} out of range; this model's transformer layers are 1..{n_layers} "
            "(0 is the embedding output, which cannot be chosen)"
        )
    if adapter.shared_layers() and len(set(values)) != n_layers:
        raise InputError(
            f"{adapter.family} shares one set of weights across its layers, so {option} cannot pick some "
            f"of them; leave {option} unset"
        )


def _module_names(model: nn.Module, modules: Sequence[nn.Module]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    return list(dict.fromkeys(names[id(m)] for m in modules))


def _freeze(model: nn.Module, adapter: ArchitectureAdapter, layers: Sequence[int]) -> None:
    head = adapter.classifier_head(model)
    assert head is not None
    model.requires_grad_(False)
    for layer in layers:
        adapter.layer(model, layer).requires_grad_(True)
    head.requires_grad_(True)


def _apply_lora(
    model: nn.Module, adapter: ArchitectureAdapter, layers: Sequence[int], config: FinetuneConfig
) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model: adapters on every linear of ``layers``, head trainable."""
    import peft

    linears = [
        m for layer in layers for m in adapter.layer(model, layer).modules() if isinstance(m, nn.Linear)
    ]
    head = adapter.classifier_head(model)
    assert head is not None
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=_module_names(model, linears),
        modules_to_save=_module_names(model, list(head.values())),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers 5 a deprecated question
        return peft.get_peft_model(model, lora)


def _export(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Save a plain transformers folder (LoRA adapters merged into the weights first)."""
    merge = getattr(model, "merge_and_unload", None)
    plain: Any = merge() if callable(merge) else model
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _write_checkpoint(
    folder: Path, epoch: int, model: nn.Module, trainer: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write ``folder/epoch-N`` atomically (a temporary folder renamed into place)."""
    final = folder / f"epoch-{epoch}"
    with atomic_dir(final) as tmp:
        save_safetensors(_trainable_state(model), tmp / "trainable.safetensors")
        torch.save(trainer, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    return final


def _epochs_on_disk(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := _EPOCH_DIR.match(p.name)))


def _damaged(path: Path, reason: str) -> CacheError:
    return CacheError(f"fine-tuning checkpoint file {path} is damaged ({reason})")


def _read_trainable(checkpoint: Path, model: nn.Module, *, load: bool = True) -> dict[str, torch.Tensor]:
    """The trainable tensors saved in ``checkpoint`` (``load=False``: only check names and shapes).

    Raises:
        CacheError: The file is missing, cut, overwritten or holds other tensors than ``model`` trains.
    """
    from safetensors import SafetensorError, safe_open

    path = checkpoint / "trainable.safetensors"
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {n: tuple(handle.get_slice(n).get_shape()) for n in handle.keys()}
            if shapes != expected:
                raise _damaged(path, "its tensors are not the ones this model trains")
            return {n: handle.get_tensor(n) for n in shapes} if load else {}
    except (SafetensorError, OSError) as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else _safetensors_problem(exc)
        raise _damaged(path, reason) from exc


def _read_trainer(checkpoint: Path) -> dict[str, Any]:
    """Optimizer, scheduler and RNG state saved in ``checkpoint`` (raises :class:`CacheError` if damaged)."""
    path = checkpoint / "trainer_state.pt"
    try:
        trainer = torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else _torch_load_problem(path, exc)
        raise _damaged(path, reason) from exc
    parts = ("optimizer", "scheduler", "rng")
    if not isinstance(trainer, dict) or not all(isinstance(trainer.get(k), dict) for k in parts):
        raise _damaged(path, "it lacks the optimizer, scheduler or random-generator state")
    if not isinstance(trainer["rng"].get("cpu"), torch.Tensor):
        raise _damaged(path, "it lacks the random-generator state")
    return trainer


def _read_state(checkpoint: Path, key: str, epoch: int) -> dict[str, Any]:
    """The ``state.json`` of ``checkpoint`` (epoch ``epoch`` of run ``key``); :class:`CacheError` if not."""
    path = checkpoint / "state.json"
    state, problem = _json_record(path)
    if state is None:
        raise _damaged(path, problem)
    if state.get("key") != key:
        raise CacheError(f"fine-tuning checkpoint {checkpoint} belongs to another run")
    try:
        fits = int(state["epoch"]) == epoch and 1 <= int(state["best_epoch"]) <= epoch
        float(state["best_value"])
    except (KeyError, TypeError, ValueError):
        fits = False
    history = state.get("history")
    if not (
        isinstance(history, list) and len(history) == epoch and all(isinstance(r, dict) for r in history)
    ):
        fits = False
    if not fits:
        raise _damaged(path, f"its entries do not describe epoch {epoch} of this run")
    return state


def _resume(
    folder: Path,
    key: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> dict[str, Any] | None:
    """Restore the newest usable checkpoint of ``folder``; return its state, or ``None`` if none is usable.

    The checkpoint's weights go into ``net``, its trainer state into ``optimizer``, ``scheduler`` and the
    RNG. A checkpoint is usable when its three files read and fit this run and the weights of its best
    epoch (which the final model will be) read too; each other one is skipped with a warning and changes
    nothing, so with none usable training starts afresh exactly as a new run does.
    """
    fresh = (copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict()), _rng_state(device))
    epochs = _epochs_on_disk(folder)
    for epoch in reversed(epochs):
        checkpoint = folder / f"epoch-{epoch}"
        try:
            state = _read_state(checkpoint, key, epoch)
            trainer = _read_trainer(checkpoint)
            tensors = _read_trainable(checkpoint, net)
            best = int(state["best_epoch"])
            if best != epoch:
                _read_trainable(folder / f"epoch-{best}", net, load=False)
            try:
                optimizer.load_state_dict(trainer["optimizer"])
                scheduler.load_state_dict(trainer["scheduler"])
                _set_rng_state(trainer["rng"], device)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                optimizer.load_state_dict(copy.deepcopy(fresh[0]))
                scheduler.load_state_dict(copy.deepcopy(fresh[1]))
                _set_rng_state(fresh[2], device)
                path = checkpoint / "trainer_state.pt"
                raise _damaged(path, f"it does not fit this optimizer: {exc}") from exc
        except CacheError as exc:
            logger.warning("%s; skipping checkpoint %s", exc, checkpoint.name)
            continue
        with torch.no_grad():
            params = dict(net.named_parameters())
            for name, tensor in tensors.items():
                params[name].copy_(tensor)
        return state
    if epochs:
        logger.warning("no usable checkpoint in %s; fine-tuning again from epoch 1", folder)
    return None


def _load_weights(model: nn.Module, checkpoint: Path) -> None:
    try:
        tensors = _read_trainable(checkpoint, model)
    except CacheError as exc:
        raise CacheError(
            f"{exc}; rerun the same command to train again from the checkpoints that are usable"
        ) from exc
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def _prune(folder: Path, keep: set[int]) -> None:
    for epoch in _epochs_on_disk(folder):
        if epoch not in keep:
            shutil.rmtree(folder / f"epoch-{epoch}", ignore_errors=True)
    for stray in folder.glob(".epoch-*"):
        shutil.rmtree(stray, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _shuffled(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[list[int]]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _train_epoch(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    epoch: int,
    config: FinetuneConfig,
    device: torch.device,
    progress: bool,
) -> float:
    """One pass over the training rows; returns the mean training loss per example."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total, seen = 0.0, 0
    batches = list(_shuffled(len(rows), config.batch_size, config.seed, epoch))
    description = f"epoch {epoch}/{config.epochs}"
    for idx in track(batches, total=len(batches), description=description, enabled=progress):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def _validate(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    labels: _Labels,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    preds, gold = _m.predict(
        model,
        rows,
        collate,
        kind=labels.kind,
        regression=labels.regression,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    values = score(labels.metrics, preds, gold)
    values.pop("n")
    return values


def _better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


@contextlib.contextmanager
def _rng_scope(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _run_key(
    config: FinetuneConfig,
    labels: _Labels,
    fingerprint: str,
    train: Examples | TokenExamples,
    validation: Any,
) -> str:
    payload = {
        "format": _FORMAT,
        "config": dataclasses.asdict(config),
        "kind": labels.kind,
        "regression": labels.regression,
        "labels": labels.names,
        "metrics": labels.metrics,
        "model": fingerprint,
        "train": train.content_hash,
        "validation": validation.content_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _result_from_json(out: Path, record: dict[str, Any]) -> FinetuneResult:
    return FinetuneResult(
        path=out,
        history=record["history"],
        best_epoch=int(record["best_epoch"]),
        metric=record["metric"],
        best_value=float(record["best_value"]),
        train_seconds=float(record["train_seconds"]),
        trainable_parameters=int(record["trainable_parameters"]),
        total_parameters=int(record["total_parameters"]),
        config=FinetuneConfig(**record["config"]),
    )


def _json_record(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in ``path``, or ``None`` and why not (missing, empty, cut, not an object)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    if not data.strip():
        return None, "empty file"
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg}, line {exc.lineno} column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__} where an object belongs"
    return value, ""


def _finished(out: Path, record: dict[str, Any]) -> FinetuneResult | None:
    """The result a readable record of this run describes, or ``None`` (with a warning) if damaged."""
    try:
        result = _result_from_json(out, record)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"entry {exc} is missing" if isinstance(exc, KeyError) else f"an entry is invalid: {exc}"
        problem = f"{out / RESULT_FILE} is damaged ({what})"
    else:
        damaged = _damaged_weights(out) if (out / "config.json").is_file() else None
        if damaged is None:
            return result
        problem = str(damaged).rsplit("; ", 1)[0]  # without its fix, which is to train again here
    logger.warning("%s; the run is not counted as finished and is trained again", problem)
    return None


def _checkpoint_owners(folder: Path) -> set[str]:
    """The run keys that the readable ``state.json`` files of ``folder``'s checkpoints name."""
    owners = set()
    for epoch in _epochs_on_disk(folder):
        state, _ = _json_record(folder / f"epoch-{epoch}" / "state.json")
        if state is not None and isinstance(state.get("key"), str):
            owners.add(state["key"])
    return owners


def _check_out(out: Path, key: str) -> FinetuneResult | None:
    """The finished run's result when ``out`` holds this run, finished; refuse an ``out`` of another run.

    Damaged records are handled as the module docstring says: an unreadable ``tunescope_finetune.json``
    makes the run unfinished; an unreadable ``checkpoints/run.json`` leaves the decision to the
    checkpoints' own ``state.json`` files.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; --out must be a folder (new, empty, or of this same run)")
    other = "choose another --out or delete it"
    result = out / RESULT_FILE
    if result.is_file():
        record, problem = _json_record(result)
        if record is None:
            logger.warning(
                "%s is damaged (%s); the run is not counted as finished and is trained again", result, problem
            )
        elif record.get("key") != key:
            raise InputError(
                f"{out} holds a fine-tuned model with other settings, data or starting model; {other}"
            )
        else:
            finished = _finished(out, record)
            if finished is not None:
                return finished
    folder = out / _CHECKPOINTS
    run = folder / "run.json"
    if run.is_file():
        record, problem = _json_record(run)
        if record is not None and not isinstance(record.get("key"), str):
            record, problem = None, 'no "key" entry'
        owners = _checkpoint_owners(folder) if record is None else {record["key"]}
        if owners and key not in owners:
            raise InputError(
                f"{out} holds checkpoints of a run with other settings, data or starting model; {other}"
            )
        if record is None:
            logger.warning(
                "%s is damaged (%s); rewriting it (each checkpoint's state.json says whose it is)",
                run,
                problem,
            )
    elif result.is_file():
        pass  # this run's record, damaged (or its model is): trained again, its files replaced
    elif out.is_dir() and any(p.name != _CHECKPOINTS or any(p.iterdir()) for p in out.iterdir()):
        raise InputError(f"{out} is not empty and holds no tunescope fine-tuning run; choose a new --out")
    return None


def _resolve_task(task: Task | str | None) -> Task | None:
    if task is None or isinstance(task, Task):
        return task
    from tunescope.data import get_task

    return get_task(task)


def finetune(
    model: str | os.PathLike[str] | Encoder | None,
    task: Task | str | None,
    out: str | os.PathLike[str],
    *,
    config: FinetuneConfig = FinetuneConfig(),  # noqa: B008 - frozen, so a shared default is safe
    train: Examples | TokenExamples | None = None,
    validation: Examples | TokenExamples | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    train_limit: int | None = None,
    validation_limit: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune an encoder on a task and save the (best) model as a Hugging Face folder.

    Everything the user can get wrong is checked before ``out`` is touched. Training then checkpoints
    each epoch; rerunning the same call (same model, data and config) after an interruption resumes
    after the last complete epoch, and rerunning a finished call returns its result at once.

    Args:
        model: ``None`` for the embedded all-MiniLM-L6-v2; a folder or hub id, loaded with a head of
            ``task.num_labels`` outputs (fresh when the checkpoint has none); or an
            :class:`~tunescope.models.Encoder`: a base model gets a fresh head, a task model is used
            with its own head (which must fit the task). The Encoder is copied, never modified.
        task: A :class:`~tunescope.data.Task` or registry name; it gives the labels, the metric and,
            unless ``train``/``validation`` are given, the data. ``None`` needs both ``train`` and
            ``validation`` (e.g. :class:`TokenExamples` from a treebank).
        out: Output folder: new, empty, or the folder of this same run (to resume).
        config: Optimisation and what trains, see :class:`FinetuneConfig`.
        train: Training examples (default: the task's ``train`` split).
        validation: Validation examples (default: the task's validation split).
        data_dir: Folder with local copies of the task's data (GLUE layout).
        train_limit: Use the first ``train_limit`` training examples.
        validation_limit: Use the first ``validation_limit`` validation examples.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        progress: Progress bars on stderr.

    Returns:
        A :class:`FinetuneResult`; ``result.path`` loads with
        ``AutoModelForSequenceClassification.from_pretrained`` (``AutoModelForTokenClassification``
        for token tasks) and with :func:`tunescope.load_classifier`.

    Raises:
        InputError: A head that does not fit the task (number of labels, regression vs classes, token
            vs sequence), layers out of range, bad options, or an ``out`` folder of another run.
        DataError: Too little data (fewer than 2 examples in a split, fewer training examples than
            classes), a training split of one class, missing labels, labels that do not fit the task.
        UnknownNameError: Unknown task or adapter.
        MissingExtraError: ``adapter="lora"`` without peft installed.

    Example:
        >>> import numpy as np, tempfile
        >>> from tunescope.testing.tiny import tiny_model
        >>> texts = ["good fine nice", "bad awful poor"] * 4
        >>> ex = Examples(texts, None, np.array([1, 0] * 4), "demo", "train", ("neg", "pos"))
        >>> out = tempfile.mkdtemp()
        >>> result = finetune(tiny_model("bert"), None, out, train=ex, validation=ex,
        ...                   config=FinetuneConfig(epochs=2, learning_rate=1e-3), progress=False)
        >>> result.metric, result.best_epoch in (1, 2), (result.path / "config.json").is_file()
        ('accuracy', True, True)
    """
    from tunescope.models.loading import _resolve_device

    torch_device = _resolve_device(device)
    if not isinstance(config, FinetuneConfig):
        raise InputError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if config.adapter == "lora":
        try:
            import peft  # noqa: F401
        except ImportError:
            raise MissingExtraError("peft", "adapters", "LoRA fine-tuning") from None
    task_obj = _resolve_task(task)
    train_ex, val_ex = _load_data(task_obj, train, validation, data_dir, train_limit, validation_limit)
    _check_counts(task_obj.name if task_obj is not None else train_ex.task, train_ex, val_ex)
    labels = _labels(task_obj, train_ex, val_ex)
    _check_classes(labels, train_ex)
    encoder = _prepare_model(model, labels, config.seed)
    adapter = encoder.adapter
    n_layers = encoder.num_layers
    if config.classifier_layer is not None and not 1 <= config.classifier_layer <= n_layers:
        raise InputError(
            f"classifier_layer {config.classifier_layer} out of range; this model's transformer layers are "
            f"1..{n_layers}"
        )
    kept = config.classifier_layer or n_layers
    _check_layers(config.train_layers, kept, "train_layers", adapter)
    _check_layers(config.adapter_layers, kept, "adapter_layers", adapter)
    if adapter.classifier_head(encoder.model) is None and (config.train_layers is not None or config.adapter):
        raise UnsupportedArchitectureError(
            f"cannot find the classifier head of {type(encoder.model).__name__}"
        )
    key = _run_key(config, labels, encoder.fingerprint, train_ex, val_ex)
    out_path = Path(out).expanduser()
    done = _check_out(out_path, key)
    if done is not None:
        logger.info("%s already holds this fine-tuning run; not retraining", out_path)
        return done

    tokenizer = encoder.tokenizer
    max_length = _m.max_length_for(tokenizer, encoder.model.config, config.max_length)
    train_rows = _m.features(tokenizer, train_ex, max_length)
    val_rows = _m.features(tokenizer, val_ex, max_length)
    collate = _m.collator(tokenizer, labels.kind)

    with _rng_scope(config.seed, torch_device):
        net: nn.Module = encoder.model
        if config.classifier_layer is not None:
            from tunescope.surgery import truncate

            net = truncate(cast(transformers.PreTrainedModel, net), config.classifier_layer)
        if config.adapter is not None:
            net = _apply_lora(net, adapter, config.adapter_layers or range(1, kept + 1), config)
        elif config.train_layers is not None:
            _freeze(net, adapter, config.train_layers)
        else:
            net.requires_grad_(True)
        net.to(torch_device)
        return _train(
            net,
            tokenizer,
            labels,
            config,
            train_rows,
            val_rows,
            collate,
            out_path,
            key,
            torch_device,
            progress,
        )


def _train(
    net: nn.Module,
    tokenizer: Any,
    labels: _Labels,
    config: FinetuneConfig,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    out: Path,
    key: str,
    device: torch.device,
    progress: bool,
) -> FinetuneResult:
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(net, config.weight_decay), lr=config.learning_rate)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps
    )
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    metric = labels.metrics[0]

    folder = out / _CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".export.*"):  # left by a run killed while saving
        shutil.rmtree(stray, ignore_errors=True)
    run_file = folder / "run.json"
    run_record, _ = _json_record(run_file)
    if run_record is None or run_record.get("key") != key:  # new, or damaged (_check_out warned)
        write_json(run_file, {"key": key, "config": dataclasses.asdict(config)})
    history: list[dict[str, Any]] = []
    best_epoch, best_value, start = 0, math.nan, 0
    state = _resume(folder, key, net, optimizer, scheduler, device)
    if state is not None:
        start = int(state["epoch"])
        history, best_epoch, best_value = (
            state["history"],
            int(state["best_epoch"]),
            float(state["best_value"]),
        )
        logger.warning(
            "resuming fine-tuning in %s after epoch %d of %d (checkpoint %s)",
            out,
            start,
            config.epochs,
            folder / f"epoch-{start}",
        )

    eval_batch = max(config.batch_size, 64)
    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        loss = _train_epoch(
            net,
            train_rows,
            collate,
            optimizer,
            scheduler,
            epoch=epoch,
            config=config,
            device=device,
            progress=progress,
        )
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss, "seconds": time.perf_counter() - began}
        evaluated = config.eval_each_epoch or epoch == config.epochs
        if evaluated:
            began = time.perf_counter()
            row.update(
                _validate(
                    net, val_rows, collate, labels, batch_size=eval_batch, device=device, progress=progress
                )
            )
            row["eval_seconds"] = time.perf_counter() - began
        # without per-epoch evaluation (or keep_best) the last epoch is the one kept
        selects = config.keep_best and config.eval_each_epoch
        if not selects or best_epoch == 0 or _better(row[metric], best_value):
            best_epoch, best_value = epoch, row.get(metric, math.nan)
        history.append(row)
        logger.info("epoch %d: %s", epoch, row)
        state = {
            "key": key,
            "epoch": epoch,
            "history": history,
            "best_epoch": best_epoch,
            "best_value": best_value,
        }
        trainer = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(device),
        }
        _write_checkpoint(folder, epoch, net, trainer, state)
        _prune(folder, {epoch, best_epoch})

    if best_epoch != config.epochs:
        _load_weights(net, folder / f"epoch-{best_epoch}")
    net.eval()
    with temp_dir(out, "export") as staging:
        _export(net, tokenizer, staging)
        apply_umask(staging)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    record = {
        "format": _FORMAT,
        "key": key,
        "task": labels.task_name,
        "kind": labels.kind,
        "label_names": labels.names,
        "metric": metric,
        "best_epoch": best_epoch,
        "best_value": best_value,
        "history": history,
        "train_seconds": float(sum(h["seconds"] for h in history)),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "config": dataclasses.asdict(config),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    write_json(out / RESULT_FILE, record)
    shutil.rmtree(folder, ignore_errors=True)
    return _result_from_json(out, record)
