"""Physical head pruning: slice removed heads out of Q, K, V and the attention output projection.

transformers 5 dropped ``prune_heads``, and 4.x's version is missing or wrong for some families
(DeBERTa-v2 refuses, MPNet keeps the full per-head relative position bias, ALBERT's index mapping does
not follow the shared layer positions). This module prunes on both versions with one mechanism:

* **Slicing.** Head ``h`` of a layer owns rows ``h * head_dim : (h + 1) * head_dim`` of the query, key
  and value projections (and DeBERTa-v2's separate ``pos_key_proj``/``pos_query_proj``; with
  ``share_att_key`` the relative positions reuse query/key and need nothing more) and the same input
  columns of the attention output projection ``W_O``. Removing a head drops those rows and columns
  and lowers the attention module's head-count attributes (``num_attention_heads``/``all_head_size``,
  DistilBERT's ``n_heads``/``dim``), which the 4.x eager and sdpa classes use to reshape; the 5.x
  classes (eager and sdpa through the attention interface) infer the head count from the shapes.
  MPNet adds a relative position bias with one row per head, computed once for all layers: a forward
  pre-hook hands each pruned layer the rows of its kept heads.
* **Layers with no head left** (only with ``allow_empty_layers=True``): the self-attention core is
  replaced by a parameter-free stand-in that returns a zero-width context, so ``W_O`` (now taking no
  input) yields its bias and the layer computes ``LayerNorm(h + b_O)``, exactly what a model whose
  heads of that layer are all gated to 0 (``mask_heads``) computes.
* **The saved record.** The removed heads (original indices) are recorded under the config key
  :data:`PRUNED_HEADS_KEY` as ``{"3": [0, 5]}`` (1-based layer as a string, JSON's only key type). A
  pruned model's ``state_dict()`` (hence ``save_pretrained`` and ``tunescope.surgery.export``) holds
  **full-size** attention tensors with the removed heads' rows and columns zero: plain
  ``from_pretrained`` in any transformers version then builds the usual modules, loads them without a
  size mismatch and computes the pruned model's function (a head whose ``W_O`` columns are zero adds
  nothing). :func:`apply_pruned_heads` (run by ``load_encoder``/``load_classifier`` through
  ``apply_saved_surgery``) checks those slices are zero and slices them off again, so the loaded model
  is as small and as fast as the saved one. ``load_state_dict`` accepts either size. The folder on
  disk therefore does not shrink; the loaded model does.

transformers 4.x's own ``config.pruned_heads`` (0-based layers) describes a model whose modules were
built pruned. A model pruned that way (loaded in 4.x, or pruned with its ``prune_heads``) is read as
such: pruning it further counts the natively removed heads, and the result moves them into
:data:`PRUNED_HEADS_KEY` and empties ``config.pruned_heads`` (its saved tensors are full-size, which
4.x would otherwise prune at build and fail to load). Calling transformers' ``prune_heads`` *after*
tunescope's on the same model is not supported.

ALBERT runs one shared layer module at every position (one per hidden group): slicing a head out of it
removes that head at every position it serves, so a request must remove the same heads at every
position sharing a module; per-position pruning of ALBERT is only possible with masking
(:func:`~tunescope.models.mask_heads`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import transformers
from torch import nn

from tunescope.errors import InputError, ModelLoadError, UnsupportedArchitectureError
from tunescope.locations import parse_location
from tunescope.models.adapters import ArchitectureAdapter, get_adapter

__all__ = [
    "PRUNED_HEADS_KEY",
    "HeadRequest",
    "apply_pruned_heads",
    "parse_heads",
    "prune_heads_in_place",
    "pruned_heads",
]

PRUNED_HEADS_KEY = "tunescope_pruned_heads"
"""Config key: ``{"<layer>": [head, ...]}``, 1-based layers, original (unpruned) head indices, sorted."""

HeadRequest = Mapping[int, Iterable[int]] | Iterable[str | tuple[int, int]] | str
"""Heads to remove: ``{layer: [head, ...]}``, or location names ``"layer.3.head.5"`` / ``(layer, head)``."""


# ------------------------------------------------------------------------------------------------
# per-family layout of the attention block
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _HeadLayout:
    """Where one family keeps the per-head parts of a layer's attention (paths below the layer).

    Attributes:
        core: The self-attention module holding the projections and the head-count attributes.
        rows: Names (in ``core``) of the projections with one block of ``head_dim`` output rows per
            head; names absent in a model (DeBERTa-v2's optional position projections) are skipped.
        count_attrs: Attributes of ``core`` holding the number of heads.
        width_attrs: Attributes of ``core`` holding ``n_heads * head_dim``.
        closing: What the attention block does after the context, which an empty layer's stand-in
            must still do: ``"outside"`` (``W_O`` and LayerNorm live outside ``core``), ``"proj"``
            (``core`` applies ``W_O`` itself), ``"proj_norm"`` (``core`` applies ``W_O``, dropout and
            ``LayerNorm(h + .)``).
        proj: Name of ``W_O`` in ``core`` (``"proj"``/``"proj_norm"``).
        norm: Name of the LayerNorm in ``core`` (``"proj_norm"``).
        dropout: Name of the dropout after ``W_O`` in ``core`` (``"proj_norm"``).
        bias_arg: Argument of ``core.forward`` carrying a per-head additive bias
            ``(batch, n_heads, q, k)`` (MPNet's relative position bias).
    """

    core: str
    rows: tuple[str, ...]
    count_attrs: tuple[str, ...] = ("num_attention_heads",)
    width_attrs: tuple[str, ...] = ("all_head_size",)
    closing: Literal["outside", "proj", "proj_norm"] = "outside"
    proj: str = ""
    norm: str = ""
    dropout: str = ""
    bias_arg: str = ""


_BERT_LAYOUT = _HeadLayout(core="attention.self", rows=("query", "key", "value"))

LAYOUTS: Mapping[str, _HeadLayout] = {
    "bert": _BERT_LAYOUT,
    "roberta": _BERT_LAYOUT,
    "xlm-roberta": _BERT_LAYOUT,
    "electra": _BERT_LAYOUT,
    "deberta-v2": _HeadLayout(
        core="attention.self",
        rows=("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"),
    ),
    "mpnet": _HeadLayout(
        core="attention.attn", rows=("q", "k", "v"), closing="proj", proj="o", bias_arg="position_bias"
    ),
    "distilbert": _HeadLayout(
        core="attention",
        rows=("q_lin", "k_lin", "v_lin"),
        count_attrs=("n_heads",),
        width_attrs=("dim",),
        closing="proj",
        proj="out_lin",
    ),
    "albert": _HeadLayout(
        core="attention",
        rows=("query", "key", "value"),
        closing="proj_norm",
        proj="dense",
        norm="LayerNorm",
        dropout="output_dropout",
    ),
}
"""Head layouts keyed by ``config.model_type`` (the same families as the adapter registry)."""


def _layout(adapter: ArchitectureAdapter) -> _HeadLayout:
    layout = LAYOUTS.get(adapter.family)
    if layout is None:
        raise UnsupportedArchitectureError(
            f"physical head pruning has no layout for {adapter.family!r}; supported families: "
            f"{', '.join(sorted(LAYOUTS))} (mask heads with tunescope.models.mask_heads instead)"
        )
    return layout


# ------------------------------------------------------------------------------------------------
# the stand-in for a layer with no head left
# ------------------------------------------------------------------------------------------------
class _NoHeads(nn.Module):
    """Stands in for a self-attention core whose heads were all pruned: the context has zero width.

    It adopts the core's submodules under their names (so the state dict keeps its keys; the
    zero-row projections save as full-size zeros) and returns what the core would return with zero
    heads: the zero-width context (``"outside"``), ``W_O`` of it, i.e. ``W_O``'s bias (``"proj"``), or
    ``LayerNorm(h + b_O)`` (``"proj_norm"``), with ``None`` for the attention weights.
    """

    def __init__(self, core: nn.Module, layout: _HeadLayout) -> None:
        super().__init__()
        for name, child in core.named_children():
            self.add_module(name, child)
        self.closing = layout.closing
        self.proj_name, self.norm_name, self.dropout_name = layout.proj, layout.norm, layout.dropout

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("query"))
        if not isinstance(hidden, torch.Tensor):
            raise TypeError("the pruned attention stand-in expects the hidden states first")
        out = hidden[..., :0]
        if self.closing != "outside":
            out = getattr(self, self.proj_name)(out)
        if self.closing == "proj_norm":
            out = getattr(self, self.norm_name)(hidden + getattr(self, self.dropout_name)(out))
        return out, None

    def extra_repr(self) -> str:
        return "every head pruned by tunescope.surgery.prune_heads"


# ------------------------------------------------------------------------------------------------
# hooks: full-size state dicts, either size loads, per-head bias rows
# ------------------------------------------------------------------------------------------------
_PAD = "_tunescope_head_slice"  # attribute of a sliced Linear: (dim, full size, kept full-size indices)
_KEPT = "_tunescope_kept_heads"  # attribute of an MPNet core: (argument index, kept heads, n heads)


def _pad_state(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: write the sliced weight (and bias) back at full size, zeros elsewhere."""
    dim, full, kept = getattr(module, _PAD)
    for name in ("weight", "bias") if dim == 0 else ("weight",):
        key = prefix + name
        tensor = state.get(key)
        if tensor is None or tensor.shape[dim] == full:
            continue
        shape = list(tensor.shape)
        shape[dim] = full
        padded = tensor.new_zeros(shape)
        index = torch.tensor(kept, dtype=torch.long, device=tensor.device)
        state[key] = padded.index_copy(dim, index, tensor)


def _slice_loaded(
    module: nn.Module,
    state: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing: list[str],
    unexpected: list[str],
    errors: list[str],
) -> None:
    """Load pre-hook: a full-size tensor (as :func:`_pad_state` writes) is sliced to the kept rows."""
    dim, full, kept = getattr(module, _PAD)
    for name in ("weight", "bias") if dim == 0 else ("weight",):
        key = prefix + name
        tensor = state.get(key)
        if isinstance(tensor, torch.Tensor) and tensor.dim() > dim and tensor.shape[dim] == full:
            index = torch.tensor(kept, dtype=torch.long, device=tensor.device)
            if len(kept) != full:
                state[key] = tensor.index_select(dim, index)


def _slice_bias(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook of an MPNet core: keep the kept heads' rows of the shared position bias."""
    position, kept, n_heads = getattr(module, _KEPT)
    name = "position_bias"
    if name in kwargs:
        bias = kwargs[name]
    elif len(args) > position:
        bias = args[position]
    else:
        return None
    if not isinstance(bias, torch.Tensor) or bias.dim() != 4 or bias.shape[1] != n_heads:
        return None
    sliced = bias.index_select(1, torch.tensor(kept, dtype=torch.long, device=bias.device))
    if name in kwargs:
        kwargs[name] = sliced
    else:
        args = (*args[:position], sliced, *args[position + 1 :])
    return args, kwargs


def _has_hook(hooks: Mapping[int, Any], fn: Any) -> bool:
    return any(getattr(h, "__wrapped__", h) is fn or h is fn for h in hooks.values())


def _slice_linear(linear: nn.Linear, local: list[int], dim: int, full: int, kept_full: list[int]) -> None:
    """Keep ``local`` rows (``dim`` 0) or input columns (``dim`` 1) of ``linear``, in place."""
    index = torch.tensor(local, dtype=torch.long, device=linear.weight.device)
    weight = linear.weight
    linear.weight = nn.Parameter(
        weight.detach().index_select(dim, index).clone(), requires_grad=weight.requires_grad
    )
    if dim == 0:
        if linear.bias is not None:
            bias = linear.bias
            linear.bias = nn.Parameter(bias.detach()[index].clone(), requires_grad=bias.requires_grad)
        linear.out_features = len(local)
    else:
        linear.in_features = len(local)
    setattr(linear, _PAD, (dim, full, list(kept_full)))
    if not _has_hook(linear._state_dict_hooks, _pad_state):
        linear.register_state_dict_post_hook(_pad_state)
        linear.register_load_state_dict_pre_hook(_slice_loaded)


# ------------------------------------------------------------------------------------------------
# requests and records
# ------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse_heads(heads: HeadRequest, n_layers: int, n_heads: int, what: str) -> dict[int, list[int]]:
    """Validate a head request; return ``{layer: sorted heads}`` (layers without heads left out).

    Args:
        heads: ``{layer: [head, ...]}`` (layer in ``1..L``, head in ``0..H-1``), or an iterable of
            location names ``"layer.3.head.5"`` or ``(layer, head)`` pairs.
        n_layers: ``L``.
        n_heads: ``H``.
        what: Names the caller in messages.

    Raises:
        InputError: A malformed name or pair, a layer or head out of range, a head named twice, or no
            head at all; the message names the valid ranges.

    Example:
        >>> parse_heads(["layer.2.head.3", "layer.1.head.0"], 2, 4, "prune_heads")
        {1: [0], 2: [3]}
        >>> parse_heads({2: [1, 0]}, 2, 4, "prune_heads")
        {2: [0, 1]}
    """
    ranges = f"layers are 1..{n_layers}, heads 0..{n_heads - 1}"
    pairs: list[tuple[Any, Any]] = []
    if isinstance(heads, Mapping):
        for layer, chosen in heads.items():
            if isinstance(chosen, (str, bytes)) or not isinstance(chosen, Iterable):
                chosen = [chosen]
            pairs.extend((layer, head) for head in chosen)
    else:
        items = [heads] if isinstance(heads, str) else heads
        if not isinstance(items, Iterable):
            raise InputError(
                f"{what}: heads must be a mapping {{layer: [head, ...]}} or a list of names like "
                f"'layer.3.head.5', got {type(heads).__name__}"
            )
        for item in items:
            if isinstance(item, str):
                try:
                    place = parse_location(item)
                except InputError:
                    place = None
                if place is None or place.head is None:
                    raise InputError(
                        f"{what}: {item!r} is not a head location; write 'layer.L.head.H' ({ranges})"
                    )
                pairs.append((place.layer, place.head))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            else:
                raise InputError(
                    f"{what}: {item!r} is not a head; pass 'layer.L.head.H' names or (layer, head) "
                    f"pairs ({ranges})"
                )
    result: dict[int, set[int]] = {}
    for layer, head in pairs:
        if not (_is_int(layer) and _is_int(head)):
            raise InputError(f"{what}: layer {layer!r}, head {head!r} are not integers ({ranges})")
        if not (1 <= int(layer) <= n_layers and 0 <= int(head) < n_heads):
            raise InputError(f"{what}: head (layer={layer}, head={head}) is out of range; {ranges}")
        chosen_heads = result.setdefault(int(layer), set())
        if int(head) in chosen_heads:
            raise InputError(f"{what}: head layer.{layer}.head.{head} is named twice; name each head once")
        chosen_heads.add(int(head))
    if not any(result.values()):
        raise InputError(f"{what}: no heads given; name heads as 'layer.L.head.H' ({ranges})")
    return {layer: sorted(hs) for layer, hs in sorted(result.items()) if hs}


def _native(config: Any) -> dict[int, list[int]]:
    """transformers 4.x's ``config.pruned_heads`` (0-based layers) as ``{1-based layer: heads}``."""
    native = getattr(config, "pruned_heads", None) or {}
    if not isinstance(native, Mapping):
        return {}
    return {int(layer) + 1: sorted(int(h) for h in heads) for layer, heads in native.items() if heads}


def pruned_heads(model: Any) -> dict[int, list[int]]:
    """Heads (original indices) the model's config records as pruned: ``{layer: heads}``, ``{}`` if none.

    Reads :data:`PRUNED_HEADS_KEY`, or else transformers 4.x's ``config.pruned_heads``.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> pruned_heads(enc)
        {}
        >>> enc.config.tunescope_pruned_heads = {"2": [3, 1]}  # what prune_heads records
        >>> pruned_heads(enc)
        {2: [1, 3]}
    """
    config = getattr(getattr(model, "model", model), "config", None)
    record = getattr(config, PRUNED_HEADS_KEY, None)
    if record:
        return {int(layer): sorted(int(h) for h in heads) for layer, heads in dict(record).items() if heads}
    return _native(config)


def _record(removed: Mapping[int, Iterable[int]]) -> dict[str, list[int]]:
    return {str(layer): sorted(heads) for layer, heads in sorted(removed.items()) if heads}


def _check_plan(
    adapter: ArchitectureAdapter,
    model: nn.Module,
    removed: Mapping[int, set[int]],
    n_heads: int,
    allow_empty_layers: bool,
    what: str,
) -> None:
    """Refuse emptied layers (unless allowed) and ALBERT sets that differ between shared positions."""
    if not allow_empty_layers:
        empty = [layer for layer, heads in sorted(removed.items()) if len(heads) == n_heads]
        if empty:
            raise InputError(
                f"{what}: this removes every head of layer(s) {', '.join(map(str, empty))}; keep at least "
                "one head per layer, or pass allow_empty_layers=True to skip those attention blocks"
            )
    if not adapter.shared_layers():
        return
    positions: dict[int, list[int]] = {}
    for position, module in enumerate(adapter.layers(model), start=1):
        positions.setdefault(id(module), []).append(position)
    for sharing in positions.values():
        sets = {tuple(sorted(removed.get(p, set()))) for p in sharing}
        if len(sets) > 1:
            span = f"{sharing[0]}..{sharing[-1]}" if len(sharing) > 2 else ",".join(map(str, sharing))
            raise InputError(
                f"{what}: {adapter.family} layers {span} run one shared attention module, so a head can "
                f"only be removed physically from all of them at once; name the same heads for every "
                f"layer {span}, or mask heads per layer with tunescope.models.mask_heads instead"
            )


# ------------------------------------------------------------------------------------------------
# slicing
# ------------------------------------------------------------------------------------------------
def _set_config(model: nn.Module, key: str, value: Any) -> None:
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, transformers.PretrainedConfig) and id(config) not in seen:
            seen.add(id(config))
            setattr(config, key, value)


def _bias_position(core: nn.Module, name: str) -> int:
    """Index of argument ``name`` among ``core.forward``'s positional arguments (after ``self``)."""
    params = list(inspect.signature(type(core).forward).parameters)[1:]
    return params.index(name) if name in params else len(params)


def _slice_layer(
    adapter: ArchitectureAdapter,
    model: nn.Module,
    layer: int,
    before: set[int],
    after: set[int],
) -> None:
    """Slice layer ``layer`` from ``before`` removed heads to ``after`` (a superset), in place."""
    config = model.config
    layout = _layout(adapter)
    n_heads, head_dim = adapter.num_heads(config), adapter.head_dim(config)
    full = n_heads * head_dim
    owner = adapter.layer(model, layer)
    kept_before = [h for h in range(n_heads) if h not in before]
    kept_after = [h for h in range(n_heads) if h not in after]
    local = [i * head_dim + j for i, h in enumerate(kept_before) if h not in after for j in range(head_dim)]
    kept_full = [h * head_dim + j for h in kept_after for j in range(head_dim)]
    core = owner.get_submodule(layout.core)
    output = adapter.attention_output(model, layer)
    if output.in_features != len(kept_before) * head_dim:
        raise InputError(
            f"layer {layer}'s attention output takes {output.in_features} features, but "
            f"{len(kept_before)} heads of {head_dim} are recorded as kept; the model's pruning record "
            "does not match its modules"
        )
    for name in layout.rows:
        projection = getattr(core, name, None)
        if isinstance(projection, nn.Linear):
            _slice_linear(projection, local, 0, full, kept_full)
    _slice_linear(output, local, 1, full, kept_full)
    for attr in layout.count_attrs:
        if hasattr(core, attr):
            setattr(core, attr, len(kept_after))
    for attr in layout.width_attrs:
        if hasattr(core, attr):
            setattr(core, attr, len(kept_after) * head_dim)
    parent_path, _, core_name = layout.core.rpartition(".")
    parent = owner.get_submodule(parent_path) if parent_path else owner
    native = getattr(parent if parent_path else core, "pruned_heads", None)
    if isinstance(native, set):  # transformers 4.x bookkeeping of removed (original) heads
        native.clear()
        native.update(after)
    if layout.bias_arg:
        setattr(core, _KEPT, (_bias_position(core, layout.bias_arg), kept_after, n_heads))
        if not _has_hook(core._forward_pre_hooks, _slice_bias):
            core.register_forward_pre_hook(_slice_bias, with_kwargs=True)
    if not kept_after and not isinstance(core, _NoHeads):
        setattr(parent, core_name, _NoHeads(core, layout))


def prune_heads_in_place(
    model: nn.Module,
    remove: Mapping[int, Iterable[int]],
    *,
    allow_empty_layers: bool,
    what: str,
) -> None:
    """Remove heads ``{layer: heads}`` (validated, original indices) from ``model``, in place.

    Heads the model already lacks (its record, or 4.x's ``config.pruned_heads``) stay removed; naming
    one again is a no-op. The union is recorded under :data:`PRUNED_HEADS_KEY`.

    Raises:
        InputError: A layer would lose every head without ``allow_empty_layers``, or (ALBERT) the sets
            differ between positions sharing one module.
    """
    adapter = get_adapter(model)
    config = model.config
    if getattr(config, PRUNED_HEADS_KEY, None) and _native(config):
        raise InputError(
            f"{what}: the config has both {PRUNED_HEADS_KEY} and transformers' pruned_heads; prune an "
            "unpruned model (or one pruned by only one of the two)"
        )
    current = {layer: set(heads) for layer, heads in pruned_heads(model).items()}
    target = {layer: set(heads) for layer, heads in current.items()}
    for layer, heads in remove.items():
        target.setdefault(int(layer), set()).update(int(h) for h in heads)
    _check_plan(adapter, model, target, adapter.num_heads(config), allow_empty_layers, what)
    done: set[int] = set()
    for layer in range(1, adapter.num_layers(config) + 1):
        owner = adapter.layer(model, layer)
        before, after = current.get(layer, set()), target.get(layer, set())
        if id(owner) in done or before == after:
            continue
        done.add(id(owner))
        _slice_layer(adapter, model, layer, before, after)
    if _native(config):
        _set_config(model, "pruned_heads", {})
    _set_config(model, PRUNED_HEADS_KEY, _record(target))


def apply_pruned_heads(model: nn.Module) -> None:
    """Re-slice a freshly loaded (full-size) model to the heads its config records as pruned, in place.

    Raises:
        ModelLoadError: The record is malformed (not ``{"layer": [heads]}`` in range, an ALBERT set
            that differs between shared positions), or the recorded heads' weights are not zero, so the
            record does not belong to these weights.
    """
    config = model.config
    value = getattr(config, PRUNED_HEADS_KEY, None)
    if not value:
        return
    adapter = get_adapter(model)
    n_layers, n_heads = adapter.num_layers(config), adapter.num_heads(config)
    try:
        if not isinstance(value, Mapping):
            raise InputError(f"expected a mapping of layers to heads, got {type(value).__name__}")
        request: dict[int, Any] = {}
        for key, heads in value.items():
            if not (isinstance(key, str) and key.isdigit()) and not _is_int(key):
                raise InputError(f"layer key {key!r} is not a layer number")
            if not isinstance(heads, (list, tuple)):
                raise InputError(f"layer {key}: expected a list of heads, got {type(heads).__name__}")
            request[int(key)] = heads
        removed = parse_heads(request, n_layers, n_heads, PRUNED_HEADS_KEY)
        _check_plan(adapter, model, {k: set(v) for k, v in removed.items()}, n_heads, True, PRUNED_HEADS_KEY)
    except InputError as exc:
        raise ModelLoadError(
            f"config entry {PRUNED_HEADS_KEY}={value!r} is invalid ({exc}); the folder was not written by "
            "tunescope.surgery or its config.json was edited"
        ) from exc
    head_dim = adapter.head_dim(config)
    if any(hasattr(adapter.attention_output(model, layer), _PAD) for layer in removed):
        return  # already sliced: applied before
    for layer, heads in removed.items():
        output = adapter.attention_output(model, layer)
        if output.in_features != n_heads * head_dim:
            raise ModelLoadError(
                f"config entry {PRUNED_HEADS_KEY}: layer {layer}'s attention output takes "
                f"{output.in_features} features, not the full {n_heads * head_dim}; the model was built "
                "pruned some other way (transformers' config.pruned_heads?); remove one of the two records"
            )
        columns = torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)])
        if torch.count_nonzero(output.weight.detach()[:, columns.to(output.weight.device)]):
            raise ModelLoadError(
                f"config entry {PRUNED_HEADS_KEY} lists heads {heads} of layer {layer} as pruned, but their "
                "attention output weights are not zero: the record does not belong to these weights "
                "(was the model changed after pruning?); remove the entry or export the model again"
            )
    # the modules are full size: slice from "nothing removed" to the record
    _set_config(model, PRUNED_HEADS_KEY, None)
    prune_heads_in_place(model, removed, allow_empty_layers=True, what=PRUNED_HEADS_KEY)
