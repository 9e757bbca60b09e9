"""The model side of a fine-tuning job: the starting task model, what trains, and the saved folder.

:func:`_prepare_model` loads or copies the model the run starts from (a fresh head, seeded, when it has
none); :func:`_check_model` refuses layer options it cannot take; :func:`_trainable_model` cuts it at
``classifier_layer`` and wraps it in LoRA or freezes it as configured; :func:`_export` saves a plain
transformers folder.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from torch import nn

from tunescope.errors import InputError, UnsupportedArchitectureError
from tunescope.finetune.config import FinetuneConfig
from tunescope.finetune.labels import _Labels
from tunescope.inference import check_head, head_kind
from tunescope.models.adapters import ArchitectureAdapter, get_adapter
from tunescope.models.loading import (
    _CONFIG_ERRORS,
    Encoder,
    default_model_path,
    load_classifier,
    load_encoder,
)

_AUTO: dict[str, Any] = {
    "sequence": transformers.AutoModelForSequenceClassification,
    "token": transformers.AutoModelForTokenClassification,
}
_HEAD_SUFFIX = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, Encoder):
            encoder = _copy_task_model(model, labels)
        else:
            encoder = _load_task_model(model, labels)
    config: Any = encoder.model.config
    config.problem_type = labels.problem_type
    if labels.names is not None:
        config.id2label = dict(enumerate(labels.names))
        config.label2id = {n: i for i, n in enumerate(labels.names)}
    return encoder


def _copy_task_model(model: Encoder, labels: _Labels) -> Encoder:
    """A copy of ``model`` as a task model: its own head if it fits ``labels``, or a fresh one on a base."""
    name = model.name
    have = head_kind(model.model)
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
        check_head(
            int(existing.num_labels),
            getattr(existing, "problem_type", None),
            regression=labels.regression,
            n_classes=None if labels.regression else labels.num_labels,
            what=name,
            fix=_mismatch_fix(labels),
        )
        task_model = copy.deepcopy(model.model)
    return Encoder(task_model, model.tokenizer, get_adapter(task_model), name=name, path=model.path)


def _load_task_model(model: str | os.PathLike[str] | None, labels: _Labels) -> Encoder:
    """Load a checkpoint as a task model: its saved head if that fits ``labels``, else a fresh one."""
    saved, num_labels, problem_type = _checkpoint_head(model)
    what = "the embedded model" if model is None else os.fspath(model)
    if saved == labels.kind:
        check_head(
            num_labels,
            problem_type,
            regression=labels.regression,
            n_classes=None if labels.regression else labels.num_labels,
            what=what,
            fix=_mismatch_fix(labels),
        )
    if labels.kind == "sequence":
        return load_classifier(model, num_labels=labels.num_labels, problem_type=labels.problem_type)
    if saved == "token":
        from tunescope.models.loading import _load

        return _load(
            model,
            _AUTO[labels.kind],
            device="cpu",
            dtype=None,
            attn_implementation=None,
            config_overrides={},
            model_kwargs={},
        )
    base = load_encoder(model)
    return Encoder(
        _wrap_base(base.model, labels),
        base.tokenizer,
        base.adapter,
        name=base.name,
        path=base.path,
    )


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


def _check_model(encoder: Encoder, config: FinetuneConfig) -> None:
    """Refuse layer options out of this model's range, and layer choices when its head cannot be found."""
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


def _trainable_model(encoder: Encoder, config: FinetuneConfig) -> nn.Module:
    """The network to train: cut after ``classifier_layer``, then wrapped in LoRA or partly frozen.

    Call it under the run's seed: LoRA draws its initial weights.
    """
    adapter = encoder.adapter
    kept = config.classifier_layer or encoder.num_layers
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
    return net


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


def _parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters that train, all parameters) of ``model``; with LoRA, count before merging."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _export(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Save a plain transformers folder (LoRA adapters merged into the weights first)."""
    merge = getattr(model, "merge_and_unload", None)
    plain: Any = merge() if callable(merge) else model
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def fresh_classifier(source: str | os.PathLike[str] | None, task: Any, seed: int) -> Encoder:
    """The pre-trained model with a fresh task head drawn exactly as :func:`~tunescope.finetune.finetune`
    draws it (``load_classifier`` under ``torch.manual_seed(seed)``).

    Experiments that change the model before fine-tuning it (FFN removal, head pruning) start from
    this, so the changed model starts from the head the full model started from; ``finetune`` cannot
    put a head on a *base* Encoder that was already changed.
    """
    problem_type = "regression" if task.label_kind == "regression" else "single_label_classification"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_classifier(source, num_labels=task.num_labels, problem_type=problem_type)
