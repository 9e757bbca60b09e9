"""The saved-surgery format: FFN removals and pruned heads recorded in a model's config, re-applied on load.

A removed FFN sublayer cannot be expressed in a plain transformers config, so the surgery lens's
``remove_ffn`` replaces the FFN's parts by the parameter-free stand-ins defined here and records the
removed layers under the config key :data:`REMOVED_FFN_KEY`. ``from_pretrained`` rebuilds every FFN
with random weights; :func:`apply_saved_surgery` (called by :func:`~tunescope.models.load_encoder` and
:func:`~tunescope.models.load_classifier`) puts the stand-ins back, so a saved model computes what was
saved. Pruned attention heads are recorded under ``tunescope_pruned_heads`` and re-sliced the same
way (:mod:`tunescope.models.head_pruning` owns that record and its checks). This module also holds
the layer-set checks both the loader and the surgery lens apply (1-based layer numbers, ALBERT's
shared layer modules), so that a saved record is validated exactly as a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import transformers
from torch import nn

from tunescope.errors import InputError, ModelLoadError
from tunescope.locations import format_layers
from tunescope.models.adapters import ArchitectureAdapter, get_adapter
from tunescope.models.head_pruning import apply_pruned_heads
from tunescope.models.loading import Encoder, _split

__all__ = ["REMOVED_FFN_KEY", "apply_saved_surgery", "removed_ffn_layers"]

REMOVED_FFN_KEY = "tunescope_removed_ffn"
"""Config key listing the layers (1-based, sorted) whose FFN sublayer ``remove_ffn`` removed."""

ModelT = TypeVar("ModelT", Encoder, transformers.PreTrainedModel)


# ------------------------------------------------------------------------------------------------
# the modules that stand in for a removed FFN
# ------------------------------------------------------------------------------------------------
class _RemovedFFNPart(nn.Module):
    """Marker base class: a parameter-free stand-in for one part of a removed FFN sublayer."""

    def extra_repr(self) -> str:
        return "FFN removed by tunescope.surgery.remove_ffn"


class _SkippedUp(_RemovedFFNPart):
    """Stands in for the up projection: returns a zero-width tensor, so no FFN work is done."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[..., :0]


class _ZeroDown(_RemovedFFNPart):
    """Stands in for the down projection: returns zeros of width ``d_model`` (the residual adds nothing)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], self.width)

    def extra_repr(self) -> str:
        return f"width={self.width}, {super().extra_repr()}"


class _SkippedNorm(_RemovedFFNPart):
    """Stands in for the LayerNorm closing the FFN block: returns its input (``0 + attention output``)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


# ------------------------------------------------------------------------------------------------
# layer sets (shared with the surgery lens)
# ------------------------------------------------------------------------------------------------
def _span(layers: Sequence[int]) -> str:
    """``[1, 2, 3]`` -> ``"1-3"``, ``[2, 5]`` -> ``"2,5"`` (:func:`tunescope.locations.format_layers`)."""
    return format_layers(layers)


def _layer_list(layers: int | Iterable[int], n_layers: int, what: str) -> list[int]:
    """Validate 1-based layer numbers; return them sorted without repeats."""
    items = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not items:
        raise InputError(f"{what}: no layers given; pass layer numbers in 1..{n_layers}")
    chosen: set[int] = set()
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise InputError(
                f"{what}: layer {layer!r} is not an integer; pass layer numbers in 1..{n_layers}"
            )
        if not 1 <= int(layer) <= n_layers:
            raise InputError(
                f"{what}: layer {layer} is out of range; transformer layers are 1..{n_layers} "
                "(0 is the embedding output, which has no attention or FFN)"
            )
        chosen.add(int(layer))
    return sorted(chosen)


def _check_shared(adapter: ArchitectureAdapter, model: nn.Module, chosen: list[int], what: str) -> None:
    """Refuse a layer set that contains some, but not all, positions of a shared (ALBERT) layer module."""
    if not adapter.shared_layers():
        return
    positions: dict[int, list[int]] = {}
    for position, module in enumerate(adapter.layers(model), start=1):
        positions.setdefault(id(module), []).append(position)
    n_layers = sum(len(p) for p in positions.values())
    for layer in chosen:
        sharing = next(p for p in positions.values() if layer in p)
        if not set(sharing) <= set(chosen):
            every = f", e.g. layers=range(1, {n_layers + 1})" if len(sharing) == n_layers else ""
            raise InputError(
                f"{what}: {adapter.family} layers {_span(sharing)} are one shared module, so layer {layer} "
                f"cannot be changed alone; pass all of {_span(sharing)}{every}"
            )


def _set_config(model: nn.Module, key: str, value: Any) -> None:
    """Set ``key`` on every distinct HF config object held by the model or its submodules."""
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, transformers.PretrainedConfig) and id(config) not in seen:
            seen.add(id(config))
            setattr(config, key, value)


# ------------------------------------------------------------------------------------------------
# the record and its re-application
# ------------------------------------------------------------------------------------------------
def _ffn_removed(layer_module: nn.Module) -> bool:
    return any(isinstance(m, _RemovedFFNPart) for m in layer_module.modules())


def _replace(owner: nn.Module, path: str, replacement: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = owner.get_submodule(parent_path) if parent_path else owner
    setattr(parent, name, replacement)


def removed_ffn_layers(model: Encoder | transformers.PreTrainedModel) -> list[int]:
    """Layers (1-based, sorted) whose FFN the model's config records as removed; ``[]`` if none.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> removed_ffn_layers(enc)
        []
        >>> enc.config.tunescope_removed_ffn = [3, 1]  # what remove_ffn records
        >>> removed_ffn_layers(enc)
        [1, 3]
    """
    config = _split(model).config
    value = getattr(config, REMOVED_FFN_KEY, None)
    return [] if not value else sorted(int(x) for x in value)


def _remove_ffn_in_place(model: transformers.PreTrainedModel, chosen: list[int]) -> None:
    """Put the stand-ins in place of the chosen layers' FFN parts and record them in the config."""
    adapter = get_adapter(model)
    for layer in chosen:
        owner = adapter.layer(model, layer)
        if _ffn_removed(owner):  # a shared ALBERT module, or removed before
            continue
        parts = adapter.ffn(model, layer)
        _replace(owner, parts.up_name, _SkippedUp())
        _replace(owner, parts.down_name, _ZeroDown(parts.down.out_features))
        _replace(owner, parts.layer_norm_name, _SkippedNorm())
    _set_config(model, REMOVED_FFN_KEY, sorted(set(removed_ffn_layers(model)) | set(chosen)))


def apply_saved_surgery(model: ModelT) -> ModelT:
    """Re-apply the surgery a saved config records (FFN removals, pruned heads) to a loaded model, in place.

    ``from_pretrained`` builds every FFN and fills removed ones with random weights (reporting them as
    missing); this replaces them again, so the model computes what was saved. Pruned heads were saved
    as zero slices of full-size attention tensors; they are checked and sliced off again
    (:func:`~tunescope.models.head_pruning.apply_pruned_heads`). A model whose config records nothing
    is returned unchanged. ``tunescope.models.load_encoder``/``load_classifier`` call
    this after loading.

    Args:
        model: An Encoder or transformers model just loaded (modified in place).

    Returns:
        ``model`` itself.

    Raises:
        ModelLoadError: The config's ``tunescope_removed_ffn`` entry is not a list of layers in ``1..L``,
            or its ``tunescope_pruned_heads`` entry is malformed or does not match the weights.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> before = sum(p.numel() for p in enc.model.parameters())
        >>> enc.config.tunescope_removed_ffn = [2]  # as a saved config.json records it
        >>> apply_saved_surgery(enc) is enc, before - sum(p.numel() for p in enc.model.parameters())
        (True, 2501)
    """
    hf = _split(model)
    apply_pruned_heads(hf)
    value = getattr(hf.config, REMOVED_FFN_KEY, None)
    if not value:
        return model
    adapter = get_adapter(hf)
    n_layers = adapter.num_layers(hf.config)
    try:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"expected a list of layers, got {type(value).__name__}")
        chosen = _layer_list(value, n_layers, REMOVED_FFN_KEY)
        _check_shared(adapter, hf, chosen, REMOVED_FFN_KEY)
    except InputError as exc:
        raise ModelLoadError(
            f"config entry {REMOVED_FFN_KEY}={value!r} is invalid ({exc}); the folder was not written by "
            "tunescope.surgery or its config.json was edited"
        ) from exc
    _remove_ffn_in_place(hf, chosen)
    return model
