"""Head gates: scale each attention head's contribution with forward pre-hooks.

transformers 5 dropped ``head_mask`` (a passed mask is silently ignored) and ``prune_heads``. A gate
works on both 4.x and 5.x instead: the attention output projection ``W_O`` of every layer receives the
concatenated per-head context ``c = [c_0, ..., c_{H-1}]`` (``H`` slices of ``head_dim`` columns), and a
forward pre-hook replaces it with ``[g_{l,0} c_0, ..., g_{l,H-1} c_{H-1}]``. A gate of 0 removes the
head, 1 leaves it alone, and because the gates enter the forward pass, ``d loss / d g_{l,h}`` at
``g = 1`` is the head importance score of Michel, Levy & Neubig (2019), "Are Sixteen Heads Really
Better than One?".

ALBERT runs one shared layer ``L`` times per forward; the hook counts its calls (the counter is reset
by a pre-hook on the base model at each forward) and applies gate row ``i`` on the ``i``-th call.
Gradient checkpointing, which re-runs layers during backward, is therefore not supported with gates
on ALBERT.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tunescope.errors import InputError
from tunescope.models.adapters import ArchitectureAdapter, get_adapter

__all__ = ["HeadGates", "mask_heads"]


def _unwrap(encoder_or_model: Any) -> tuple[nn.Module, ArchitectureAdapter]:
    """The model and adapter of an ``Encoder`` or a bare HF model."""
    model = getattr(encoder_or_model, "model", encoder_or_model)
    if not isinstance(model, nn.Module):
        raise InputError(
            f"expected an Encoder or a transformers model, got {type(encoder_or_model).__name__}"
        )
    return model, get_adapter(encoder_or_model)


class HeadGates:
    """Context manager that multiplies every head's output by a gate.

    Args:
        encoder_or_model: An :class:`~tunescope.models.Encoder` or a Hugging Face base/task model.
        gates: Tensor of shape ``(n_layers, n_heads)``; row ``l - 1`` gates layer ``l``. Default: ones.
            It may require grad (then ``gates.grad`` after ``loss.backward()`` is the head importance);
            it is moved to the device and dtype of the activations at each call, and read at each
            forward, so editing it in place (under ``torch.no_grad()``) between forwards works.

    Example:
        >>> import torch
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert")
        >>> batch = enc.tokenizer(["a good film"], return_tensors="pt")
        >>> gates = torch.ones(enc.num_layers, enc.num_heads, requires_grad=True)
        >>> with HeadGates(enc, gates):
        ...     out = enc.model(**batch).last_hidden_state
        >>> out.sum().backward()
        >>> gates.grad.shape
        torch.Size([2, 4])
    """

    def __init__(self, encoder_or_model: Any, gates: torch.Tensor | None = None) -> None:
        self._model, self._adapter = _unwrap(encoder_or_model)
        config = self._model.config
        self._n_layers = self._adapter.num_layers(config)
        self._n_heads = self._adapter.num_heads(config)
        self._head_dim = self._adapter.head_dim(config)
        if gates is None:
            gates = torch.ones(self._n_layers, self._n_heads)
        if not isinstance(gates, torch.Tensor) or tuple(gates.shape) != (self._n_layers, self._n_heads):
            shape = tuple(gates.shape) if isinstance(gates, torch.Tensor) else type(gates).__name__
            raise InputError(
                f"gates must be a tensor of shape (n_layers, n_heads) = ({self._n_layers}, "
                f"{self._n_heads}), got {shape}"
            )
        if not gates.is_floating_point():
            raise InputError(f"gates must be a floating-point tensor, got {gates.dtype}")
        self._gates = gates
        self._handles: list[RemovableHandle] = []
        self._calls: dict[int, int] = {}

    @property
    def gates(self) -> torch.Tensor:
        """The gate tensor, shape ``(n_layers, n_heads)`` (the object passed in, not a copy)."""
        return self._gates

    @property
    def active(self) -> bool:
        """Whether the hooks are registered (inside the ``with`` block)."""
        return bool(self._handles)

    def __enter__(self) -> HeadGates:
        if self._handles:
            raise InputError("these HeadGates are already active; leave the first `with` block first")
        uses: dict[int, tuple[nn.Linear, list[int]]] = {}
        for layer in range(1, self._n_layers + 1):
            proj = self._adapter.attention_output(self._model, layer)
            expected = self._n_heads * self._head_dim
            if proj.in_features != expected:
                raise InputError(
                    f"layer {layer}'s attention output takes {proj.in_features} features, not "
                    f"n_heads * head_dim = {expected}; was the model pruned? gate an unpruned model"
                )
            uses.setdefault(id(proj), (proj, []))[1].append(layer - 1)
        self._calls = dict.fromkeys(uses, 0)
        try:
            for key, (proj, rows) in uses.items():
                hook = self._make_hook(key, rows)
                self._handles.append(proj.register_forward_pre_hook(hook, with_kwargs=True))
            base = self._adapter.base_model(self._model)
            self._handles.append(base.register_forward_pre_hook(self._reset_counts))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._calls = {}

    def _reset_counts(self, module: nn.Module, args: Any) -> None:
        for key in self._calls:
            self._calls[key] = 0

    def _make_hook(self, key: int, rows: list[int]) -> Any:
        n_heads, head_dim = self._n_heads, self._head_dim

        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if len(rows) == 1:
                row = rows[0]
            else:  # a shared module: the i-th call in this forward is layer rows[i]
                call = self._calls[key]
                if call >= len(rows):
                    raise InputError(
                        "a shared attention projection ran more often than the model has layers in one "
                        "forward; head gates on ALBERT do not support gradient checkpointing"
                    )
                self._calls[key] = call + 1
                row = rows[call]
            if args:
                x, rest = args[0], args[1:]
            else:
                x, rest = kwargs.pop("input"), ()
            gate = self._gates[row].to(device=x.device, dtype=x.dtype)
            # (..., H * head_dim) -> (..., H, head_dim), scale each head, flatten back
            gated = (x.unflatten(-1, (n_heads, head_dim)) * gate[:, None]).flatten(-2)
            return (gated, *rest), kwargs

        return hook


def mask_heads(encoder_or_model: Any, heads: Iterable[tuple[int, int]]) -> HeadGates:
    """Gates that switch off the given heads (use as a context manager).

    Args:
        encoder_or_model: An :class:`~tunescope.models.Encoder` or a Hugging Face model.
        heads: ``(layer, head)`` pairs, layer in ``1..L``, head in ``0..H-1``.

    Returns:
        Inactive :class:`HeadGates` with zeros at the given heads and ones elsewhere.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("distilbert")
        >>> gates = mask_heads(enc, [(1, 0), (2, 3)])
        >>> gates.gates.tolist()
        [[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    """
    model, adapter = _unwrap(encoder_or_model)
    n_layers, n_heads = adapter.num_layers(model.config), adapter.num_heads(model.config)
    gates = torch.ones(n_layers, n_heads)
    for layer, head in heads:
        if not (1 <= layer <= n_layers and 0 <= head < n_heads):
            raise InputError(
                f"head (layer={layer}, head={head}) is out of range; layers are 1..{n_layers}, "
                f"heads 0..{n_heads - 1}"
            )
        gates[layer - 1, head] = 0.0
    return HeadGates(encoder_or_model, gates)
