"""Model surgery: truncate top layers, restore or re-initialise layers, freeze, remove FFN sublayers,
prune attention heads.

Every function works on any supported family through its
:class:`~tunescope.models.adapters.ArchitectureAdapter`, takes an
:class:`~tunescope.models.Encoder` or a bare ``transformers.PreTrainedModel`` (base or task model) and
gives back the same kind. Layers are numbered as in DESIGN.md: ``1..L`` are the transformer layers
(``0``, the embedding output, has no attention or FFN). The functions that change weights or structure
(:func:`truncate`, :func:`restore_layers`, :func:`reinit_layers`, :func:`remove_ffn`,
:func:`prune_heads`) work on a deep
copy and leave their input untouched; :func:`freeze_layers` and :func:`freeze_embeddings` change
``requires_grad`` in place, as a training setup does.

ALBERT shares one layer module across all ``L`` positions (one per hidden group). Truncating it means
running the shared layer fewer times. Restoring, re-initialising, freezing or removing the FFN of
*one* position would change every position that shares the module, so those functions refuse a set of
layers that splits a shared module (pass every position, e.g. ``range(1, L + 1)``).

A removed FFN cannot be expressed in a plain transformers config, so :func:`remove_ffn` records the
removed layers under the config key :data:`REMOVED_FFN_KEY`; :func:`apply_saved_surgery` re-applies
the removal after ``from_pretrained`` (``tunescope.models.load_encoder``/``load_classifier`` call it).
Pruned heads are recorded under :data:`PRUNED_HEADS_KEY` and re-sliced the same way (see
:mod:`tunescope.models.head_pruning` for the format).
That record format, and the checks on a model's classifier head, live in :mod:`tunescope.models`
(``saved_surgery``, ``loading``) so that loading never needs this module; they are re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch
import transformers
from torch import nn

from tunescope._io import atomic_dir
from tunescope.errors import InputError, UnsupportedArchitectureError
from tunescope.models.adapters import ArchitectureAdapter, SharedLayerAdapter, get_adapter
from tunescope.models.head_pruning import (
    PRUNED_HEADS_KEY,
    HeadRequest,
    parse_heads,
    prune_heads_in_place,
    pruned_heads,
)
from tunescope.models.loading import (
    Encoder,
    _split,
    from_model,
    load_trained_classifier,
    require_classifier,
)
from tunescope.models.saved_surgery import (
    REMOVED_FFN_KEY,
    ModelT,
    _check_shared,
    _layer_list,
    _remove_ffn_in_place,
    _set_config,
    _span,
    apply_saved_surgery,
    removed_ffn_layers,
)

__all__ = [
    "PRUNED_HEADS_KEY",
    "REMOVED_FFN_KEY",
    "apply_saved_surgery",
    "count_parameters",
    "export",
    "freeze_embeddings",
    "freeze_layers",
    "prune_heads",
    "pruned_heads",
    "reinit_layers",
    "remove_ffn",
    "removed_ffn_layers",
    "require_classifier",
    "load_trained_classifier",
    "restore_layers",
    "trainable_parameters",
    "truncate",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _like(original: ModelT, new: transformers.PreTrainedModel, what: str) -> ModelT:
    """Wrap ``new`` like ``original``: an Encoder (same tokenizer, name noting ``what``) or a bare model."""
    if isinstance(original, Encoder):
        return cast(ModelT, from_model(new, original.tokenizer, name=f"{original.name}@{what}"))
    return cast(ModelT, new)


def _describe(adapter: ArchitectureAdapter, model: nn.Module) -> str:
    config = model.config
    return (
        f"{adapter.family}, {adapter.num_layers(config)} layers, d_model {adapter.hidden_size(config)}, "
        f"d_ff {adapter.intermediate_size(config)}"
    )


def count_parameters(model: Encoder | nn.Module) -> int:
    """Number of parameters (shared ALBERT weights and tied embeddings counted once).

    Args:
        model: An :class:`~tunescope.models.Encoder` or any ``nn.Module``.

    Returns:
        The total number of scalar parameters.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> count_parameters(enc) == sum(p.numel() for p in enc.model.parameters())
        True
    """
    module = model.model if isinstance(model, Encoder) else model
    return sum(p.numel() for p in module.parameters())  # a shared parameter is yielded once


def trainable_parameters(model: Encoder | nn.Module) -> int:
    """Number of parameters with ``requires_grad`` set (shared weights counted once).

    Args:
        model: An :class:`~tunescope.models.Encoder` or any ``nn.Module``.

    Returns:
        The number of scalar parameters an optimizer would update.
    """
    module = model.model if isinstance(model, Encoder) else model
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------
# truncation
# ------------------------------------------------------------------------------------------------
def _group_index(position: int, n_layers: int, n_groups: int) -> int:
    """The hidden group ALBERT runs at 0-based ``position`` (the formula of ``AlbertTransformer``)."""
    return int(position / (n_layers / n_groups))


def _albert_keeps(n_layers: int, n_groups: int, keep: int) -> int | None:
    """Groups an ALBERT truncated to ``keep`` layers needs, or ``None`` if the formula cannot express it."""
    wanted = [_group_index(i, n_layers, n_groups) for i in range(keep)]
    used = wanted[-1] + 1
    return used if [_group_index(i, keep, used) for i in range(keep)] == wanted else None


def _truncate_shared(adapter: SharedLayerAdapter, model: nn.Module, keep: int) -> None:
    """Keep the first ALBERT positions: fewer applications of the shared group(s), same weights."""
    config = model.config
    n_layers, n_groups = adapter.num_layers(config), int(getattr(config, "num_hidden_groups", 1))
    used = _albert_keeps(n_layers, n_groups, keep)
    if used is None:
        valid = [k for k in range(1, n_layers + 1) if _albert_keeps(n_layers, n_groups, k) is not None]
        raise InputError(
            f"truncate: an ALBERT with {n_layers} layers in {n_groups} hidden groups can only keep whole "
            f"runs of its groups; choose keep in {', '.join(map(str, valid))}"
        )
    base = adapter.base_model(model)
    for path in adapter.group_list:
        parent_path, _, name = path.rpartition(".")
        parent = base.get_submodule(parent_path) if parent_path else base
        groups = getattr(parent, name, None)
        if isinstance(groups, nn.ModuleList):
            setattr(parent, name, nn.ModuleList(list(groups)[:used]))
            _set_config(model, "num_hidden_groups", used)
            return
    raise UnsupportedArchitectureError(
        f"albert model has no layer groups at {' or '.join(adapter.group_list)}"
    )


def _truncate_stack(adapter: ArchitectureAdapter, model: nn.Module, keep: int) -> None:
    """Keep the first ``keep`` modules of the family's layer ``ModuleList``."""
    found = adapter.layer_stack(model)
    if found is None:
        raise UnsupportedArchitectureError(
            f"{adapter.family} model has no layer list at {' or '.join(adapter.layer_list)}"
        )
    parent, name, stack = found
    setattr(parent, name, nn.ModuleList(list(stack)[:keep]))
    if isinstance(getattr(parent, "n_layers", None), int):  # DistilBERT's Transformer caches it
        setattr(parent, "n_layers", keep)  # noqa: B010


def truncate(model: ModelT, keep: int) -> ModelT:
    """Drop the top ``L - keep`` transformer layers; keep embeddings, pooler and classifier head.

    The result computes the classifier head on the output of layer ``keep``: its last hidden state
    equals the full model's ``hidden_states[keep]``. ``config.num_hidden_layers`` becomes ``keep``, so a
    folder written by :func:`export` loads in plain transformers. For ALBERT the shared layer is simply
    run ``keep`` times (with several hidden groups, only the groups the first ``keep`` positions use are
    kept). FFN removals recorded in the config (see :func:`remove_ffn`) above ``keep`` are dropped.

    Args:
        model: An Encoder or a transformers base or task model; it is not modified.
        keep: Number of layers to keep, ``1..L``.

    Returns:
        A new model of the same kind (a new Encoder with the same tokenizer for an Encoder).

    Raises:
        InputError: ``keep`` is not in ``1..L`` (or, for an ALBERT with several hidden groups, would
            split a group's run of positions).

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert", task="classifier", num_layers=3)
        >>> small = truncate(enc, keep=2)
        >>> small.num_layers, enc.num_layers
        (2, 3)
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    n_layers = adapter.num_layers(hf.config)
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= int(keep) <= n_layers:
        raise InputError(
            f"truncate: keep={keep!r} is invalid; keep between 1 and {n_layers} layers (L={n_layers})"
        )
    keep = int(keep)
    new = copy.deepcopy(hf)
    if isinstance(adapter, SharedLayerAdapter):
        _truncate_shared(adapter, new, keep)
    else:
        _truncate_stack(adapter, new, keep)
    _set_config(new, "num_hidden_layers", keep)
    removed = removed_ffn_layers(new)
    if removed:
        _set_config(new, REMOVED_FFN_KEY, [layer for layer in removed if layer <= keep])
    return _like(model, new, f"truncate={keep}")


# ------------------------------------------------------------------------------------------------
# restore / re-initialise / freeze
# ------------------------------------------------------------------------------------------------
def restore_layers(
    tuned: ModelT, base: Encoder | transformers.PreTrainedModel, layers: int | Iterable[int]
) -> ModelT:
    """Copy the chosen layers' weights from ``base`` (pre-trained) into a copy of ``tuned``.

    Only the transformer layers are touched (attention, FFN and their LayerNorms); embeddings, pooler
    and classifier stay ``tuned``'s. ``base`` may be a base model and ``tuned`` a task model of the
    same architecture.

    Args:
        tuned: The fine-tuned Encoder or model; it is not modified.
        base: The pre-trained Encoder or model, same family and size.
        layers: Layer numbers (``1..L``) to restore.

    Returns:
        A new model of ``tuned``'s kind.

    Raises:
        InputError: Empty or out-of-range layers; ``base`` and ``tuned`` differ in family, depth or
            layer shapes; for ALBERT, a set that splits the shared layer (restore all layers or none).

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> tuned, base = tiny_model("bert", task="classifier", seed=1), tiny_model("bert")
        >>> new = restore_layers(tuned, base, [2])
        >>> import torch
        >>> torch.equal(new.adapter.ffn(new.model, 2).up.weight, base.adapter.ffn(base.model, 2).up.weight)
        True
    """
    hf_tuned, hf_base = _split(tuned), _split(base)
    adapter, base_adapter = get_adapter(hf_tuned), get_adapter(hf_base)
    n_layers = adapter.num_layers(hf_tuned.config)
    if adapter.family != base_adapter.family or n_layers != base_adapter.num_layers(hf_base.config):
        raise InputError(
            f"restore_layers: tuned ({_describe(adapter, hf_tuned)}) and base "
            f"({_describe(base_adapter, hf_base)}) differ; pass the pre-trained model tuned was made from"
        )
    chosen = _layer_list(layers, n_layers, "restore_layers")
    _check_shared(adapter, hf_tuned, chosen, "restore_layers")
    new = copy.deepcopy(hf_tuned)
    for layer in chosen:
        source = base_adapter.layer(hf_base, layer).state_dict()
        target = adapter.layer(new, layer)
        wanted = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in source.items()}
        if wanted != found:
            diff = sorted(set(wanted.items()) ^ set(found.items()))[0][0]
            raise InputError(
                f"restore_layers: layer {layer} differs between tuned ({_describe(adapter, hf_tuned)}) and "
                f"base ({_describe(base_adapter, hf_base)}) at {diff!r} (a removed FFN or another size?); "
                "base and tuned must be the same architecture and size"
            )
        target.load_state_dict(source)
    return _like(tuned, new, f"restore={_span(chosen)}")


def _layer_seed(seed: int, layer: int) -> int:
    """An independent seed for each (seed, layer) pair."""
    return int(np.random.SeedSequence([seed, layer]).generate_state(1)[0])


def _forget_loaded(module: nn.Module) -> None:
    """Drop transformers 5's "loaded from a checkpoint" marks, which make its init functions skip a tensor."""
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if hasattr(tensor, "_is_hf_initialized"):
            delattr(tensor, "_is_hf_initialized")


def reinit_layers(model: ModelT, layers: int | Iterable[int], *, seed: int = 0) -> ModelT:
    """Re-initialise the chosen layers with the model's own ``_init_weights`` (the family's init).

    Each layer is re-drawn from a seed derived from ``(seed, layer)``, so a layer's new weights do not
    depend on which other layers are re-initialised; the global RNG state is left unchanged.

    Args:
        model: An Encoder or transformers model; it is not modified.
        layers: Layer numbers (``1..L``).
        seed: Non-negative seed.

    Returns:
        A new model of the same kind.

    Raises:
        InputError: Empty or out-of-range layers, a negative seed, or (ALBERT) a set that splits the
            shared layer.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> import torch
        >>> a, b = reinit_layers(enc, [1], seed=3), reinit_layers(enc, [1, 2], seed=3)
        >>> torch.equal(a.adapter.ffn(a.model, 1).up.weight, b.adapter.ffn(b.model, 1).up.weight)
        True
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"reinit_layers: seed must be a non-negative integer, got {seed!r}")
    chosen = _layer_list(layers, adapter.num_layers(hf.config), "reinit_layers")
    _check_shared(adapter, hf, chosen, "reinit_layers")
    new = copy.deepcopy(hf)
    init_weights = getattr(new, "_init_weights", None)
    if not callable(init_weights):
        raise UnsupportedArchitectureError(
            f"{type(new).__name__} has no _init_weights; reinit_layers needs a transformers PreTrainedModel"
        )
    devices = sorted({p.device.index or 0 for p in new.parameters() if p.device.type == "cuda"})
    done: set[int] = set()
    for layer in chosen:
        module = adapter.layer(new, layer)
        if id(module) in done:  # a shared ALBERT module: initialise it once
            continue
        done.add(id(module))
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(_layer_seed(int(seed), layer))
            for sub in module.modules():
                _forget_loaded(sub)
                init_weights(sub)
    return _like(model, new, f"reinit={_span(chosen)},seed={seed}")


def freeze_layers(model: ModelT, layers: int | Iterable[int]) -> ModelT:
    """Set ``requires_grad = False`` on every parameter of the chosen layers, in place.

    Args:
        model: An Encoder or transformers model (modified in place).
        layers: Layer numbers (``1..L``).

    Returns:
        ``model`` itself.

    Raises:
        InputError: Empty or out-of-range layers, or (ALBERT) a set that splits the shared layer.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> before = trainable_parameters(enc)
        >>> trainable_parameters(freeze_layers(enc, [1])) < before
        True
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    chosen = _layer_list(layers, adapter.num_layers(hf.config), "freeze_layers")
    _check_shared(adapter, hf, chosen, "freeze_layers")
    for layer in chosen:
        for parameter in adapter.layer(hf, layer).parameters():
            parameter.requires_grad_(False)
    return model


def freeze_embeddings(model: ModelT) -> ModelT:
    """Set ``requires_grad = False`` on everything of the base model outside its layers and pooler, in place.

    That is everything below layer 1 or shared by all layers: word, position and token-type
    embeddings and their LayerNorm, ELECTRA's and ALBERT's projection of the embeddings to ``d_model``,
    DeBERTa-v2's relative position embeddings and MPNet's relative attention bias (and tied MLM output
    embeddings with them). Transformer layers, poolers and the task head keep their flags.

    Args:
        model: An Encoder or transformers model (modified in place).

    Returns:
        ``model`` itself.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = freeze_embeddings(tiny_model("bert", task="classifier"))
        >>> enc.adapter.embeddings(enc.model).word_embeddings.weight.requires_grad
        False
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    base = adapter.base_model(hf)
    keep = {id(p) for layer in adapter.layers(hf) for p in layer.parameters()}
    for path in adapter.base_head_parts:
        with contextlib.suppress(AttributeError):
            keep |= {id(p) for p in base.get_submodule(path).parameters()}
    for parameter in base.parameters():
        if id(parameter) not in keep:
            parameter.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------
# FFN removal
# ------------------------------------------------------------------------------------------------
def remove_ffn(model: ModelT, layers: int | Iterable[int]) -> ModelT:
    """Remove the FFN sublayer of the chosen layers: each such layer outputs its attention block's output.

    In every supported (post-LN) family a layer computes ``a = attention_block(h)`` and then
    ``h_out = layer_norm(a + down(act(up(a))))``. After removal ``h_out = a``: the up projection, the
    down projection and the FFN's residual LayerNorm are replaced by parameter-free stand-ins
    (zero-width up, zero down, identity norm; no FFN arithmetic is left), so the parameter count drops
    by exactly those three modules' parameters. The removed layers are recorded in
    ``config.tunescope_removed_ffn`` so that saved models load back through tunescope (see
    :func:`apply_saved_surgery`); plain ``from_pretrained`` alone would rebuild random FFNs.
    Removing an already removed FFN is a no-op.

    Args:
        model: An Encoder or transformers model; it is not modified.
        layers: Layer numbers (``1..L``); for ALBERT, every layer (the FFN is shared).

    Returns:
        A new model of the same kind.

    Raises:
        InputError: Empty or out-of-range layers, or (ALBERT) a set that splits the shared layer.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> count_parameters(enc) - count_parameters(remove_ffn(enc, [1]))  # 32*37+37 + 37*32+32 + 2*32
        2501
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    chosen = _layer_list(layers, adapter.num_layers(hf.config), "remove_ffn")
    _check_shared(adapter, hf, chosen, "remove_ffn")
    new = copy.deepcopy(hf)
    _remove_ffn_in_place(new, chosen)
    return _like(model, new, f"remove_ffn={_span(chosen)}")


# ------------------------------------------------------------------------------------------------
# head pruning
# ------------------------------------------------------------------------------------------------
def prune_heads(model: ModelT, heads: HeadRequest, *, allow_empty_layers: bool = False) -> ModelT:
    """Remove attention heads physically: their rows of Q, K, V and columns of the output projection.

    The pruned model computes what the unpruned one computes with those heads gated to 0
    (:func:`~tunescope.models.mask_heads`), with fewer parameters and less work. Head indices are
    always the original ones (``0..H-1``), also on a model pruned before; naming a head pruned before
    is a no-op. The removed heads are recorded in ``config.tunescope_pruned_heads`` (``{"3": [0, 5]}``);
    saved folders hold full-size attention tensors whose pruned slices are zero, so plain
    ``from_pretrained`` computes the same outputs and ``tunescope.models.load_encoder``/
    ``load_classifier`` give back the small model (:mod:`tunescope.models.head_pruning` explains the
    format and the per-family details). Head gates (``mask_heads``) refuse a pruned model.

    Args:
        model: An Encoder or transformers model; it is not modified.
        heads: ``{layer: [head, ...]}`` (layer ``1..L``, head ``0..H-1``) or location names
            ``["layer.3.head.5", ...]`` (``(layer, head)`` pairs work too).
        allow_empty_layers: Allow removing every head of a layer; its attention block then adds
            nothing but the output projection's bias (``LayerNorm(h + b_O)``, as masking computes).

    Returns:
        A new model of the same kind.

    Raises:
        InputError: Malformed names, out-of-range or repeated heads, a layer left without heads
            (unless ``allow_empty_layers``), or (ALBERT, one layer module shared by all positions)
            different head sets for positions that share a module: mask per layer instead.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")  # d_model 32, 4 heads of 8
        >>> small = prune_heads(enc, ["layer.1.head.0", "layer.2.head.3"])
        >>> count_parameters(enc) - count_parameters(small)  # per head: 3 * (8*32 + 8) + 32*8
        2096
        >>> pruned_heads(small)
        {1: [0], 2: [3]}
    """
    hf = _split(model)
    adapter = get_adapter(hf)
    config = hf.config
    chosen = parse_heads(heads, adapter.num_layers(config), adapter.num_heads(config), "prune_heads")
    new = copy.deepcopy(hf)
    prune_heads_in_place(new, chosen, allow_empty_layers=allow_empty_layers, what="prune_heads")
    names = ";".join(f"{layer}:{','.join(map(str, hs))}" for layer, hs in chosen.items())
    return _like(model, new, f"prune_heads={names}")


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def export(
    model: Encoder | transformers.PreTrainedModel,
    out: str | os.PathLike[str],
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face model folder (config, safetensors weights, tokenizer), atomically.

    Everything is written into a temporary folder beside ``out`` and renamed into place, so a failure
    leaves no half folder. A truncated model's folder says ``num_hidden_layers = keep`` and loads in
    plain ``AutoModel``/``AutoModelForSequenceClassification`` with identical outputs. A model with
    removed FFNs must be loaded through ``tunescope.models.load_encoder``/``load_classifier`` (or
    ``from_pretrained`` followed by :func:`apply_saved_surgery`).

    Args:
        model: An Encoder or transformers model.
        out: The folder to create.
        tokenizer: Tokenizer to save; default: the Encoder's. Without one the folder holds no tokenizer
            files (tunescope's loaders then refuse it).
        overwrite: Replace an existing non-empty ``out``.

    Returns:
        The folder written.

    Raises:
        InputError: ``out`` exists and is a file, or a non-empty folder and ``overwrite`` is false.
    """
    hf = _split(model)
    if tokenizer is None and isinstance(model, Encoder):
        tokenizer = model.tokenizer
    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"export: {target} is a file; pass a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(
            f"export: {target} exists and is not empty; choose a new folder or pass overwrite=True"
        )
    if removed_ffn_layers(hf):
        logger.warning(
            "%s holds a model with removed FFNs (layers %s): load it with tunescope.models.load_* "
            "(plain from_pretrained would rebuild random FFNs)",
            target,
            _span(removed_ffn_layers(hf)),
        )
    if pruned_heads(hf):
        logger.info(
            "%s holds a model with pruned heads: its attention tensors are saved at full size with the "
            "pruned slices zero; tunescope.models.load_* slice them off again",
            target,
        )
    with atomic_dir(target) as tmp:  # an existing folder is replaced whole, once the new one is written
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target
