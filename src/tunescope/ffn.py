"""How much each layer's FFN sublayer changes the representation, and which FFNs to remove.

Sridhar & Sarah (2020, "Undivided attention: are intermediate layers necessary for BERT?") remove the
feed-forward (intermediate) sublayer of some layers before fine-tuning and find that the task barely
suffers. :func:`ffn_cka` measures, per layer, the linear CKA (Kornblith et al. 2019) between the FFN
sublayer's input ``a`` (the attention block's output) and the layer's output ``LayerNorm(a + FFN(a))``,
over every non-padding token (the FFN acts on each token separately). CKA near 1 means the FFN leaves
the token geometry almost as it found it (up to rotation and scale), so removing it should cost least:
:func:`choose_ffn_layers` takes the :func:`default_count` layers with the highest CKA, and
:func:`check_ffn_layers` validates a user's choice (``--ffn.layers``). The removal itself is
:func:`tunescope.surgery.remove_ffn`; the ``ffn`` stage wires these together with fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from tunescope.errors import InputError

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.models import Encoder

__all__ = ["check_ffn_layers", "choose_ffn_layers", "default_count", "ffn_cka"]


def ffn_cka(
    encoder: Encoder, examples: Examples, *, batch_size: int = 32, max_length: int = 128
) -> dict[int, float]:
    """Per layer, linear CKA between the FFN sublayer's input and the layer's output, over tokens.

    For layer ``l`` (post-LN: ``out = LayerNorm(a + down(act(up(a))))``), ``X`` holds ``a``, the input
    of the FFN's up projection, and ``Y`` holds ``out``, the output of the LayerNorm closing the FFN
    block; each has one row per non-padding token of every example, ``(n_tokens, d_model)``. Forward
    hooks on the adapter's :class:`~tunescope.models.adapters.FFNParts` capture both; the CKA is
    accumulated batch by batch (:class:`~tunescope.similarity.StreamingCKA`, exact, ``O(d_model^2)``
    memory). Positions that share a module (ALBERT) are told apart by call order. The model runs in
    eval mode (its mode is restored afterwards); nothing else about it changes.

    Args:
        encoder: A base or task model with intact FFNs.
        examples: Texts (and pairs) to run; labels are not used.
        batch_size: Examples per forward pass.
        max_length: Truncate inputs to this many tokens.

    Returns:
        ``{layer: cka}`` for layers ``1..L``, each in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> from tunescope.data import Examples
        >>> from tunescope.testing.tiny import tiny_model
        >>> ex = Examples(["a good film", "bad", "fine acting", "dull"], None, None, "demo", "x", None)
        >>> cka = ffn_cka(tiny_model("bert", num_layers=2), ex)
        >>> sorted(cka), all(0 <= v <= 1 for v in cka.values())
        ([1, 2], True)
    """
    from tunescope.inference import max_length_for
    from tunescope.similarity import StreamingCKA

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model, tokenizer = encoder.model, encoder.tokenizer
    parts = [encoder.adapter.ffn(model, layer) for layer in range(1, encoder.num_layers + 1)]
    inputs: dict[int, list[torch.Tensor]] = {}
    outputs: dict[int, list[torch.Tensor]] = {}
    call: list[int] = []  # which call of its (possibly shared) module each position is, per forward
    handles = []

    def grab_input(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        inputs[id(module)].append(args[0].detach())

    def grab_output(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        outputs[id(module)].append(output.detach())

    for i, part in enumerate(parts):
        call.append(sum(p.up is part.up for p in parts[:i]))
        if id(part.up) not in inputs:
            inputs[id(part.up)] = []
            handles.append(part.up.register_forward_pre_hook(grab_input))
        if id(part.layer_norm) not in outputs:
            outputs[id(part.layer_norm)] = []
            handles.append(part.layer_norm.register_forward_hook(grab_output))
    length = max_length_for(tokenizer, model.config, max_length)
    device = encoder.device
    accumulators = [StreamingCKA() for _ in parts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                stop = start + batch_size
                pairs = examples.text_pairs[start:stop] if examples.text_pairs is not None else None
                batch = tokenizer(
                    examples.texts[start:stop],
                    pairs,
                    truncation=True,
                    max_length=length,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                for captured in (*inputs.values(), *outputs.values()):
                    captured.clear()
                model(**batch)
                mask = batch["attention_mask"].bool()
                for acc, part, k in zip(accumulators, parts, call, strict=True):
                    acc.update([inputs[id(part.up)][k][mask]], [outputs[id(part.layer_norm)][k][mask]])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: float(acc.compute()[0, 0]) for layer, acc in enumerate(accumulators, start=1)}


def default_count(n_layers: int) -> int:
    """How many FFNs the stage removes when ``--ffn.layers`` is not given: ``max(1, L // 3)``."""
    return max(1, n_layers // 3)


def choose_ffn_layers(cka: Mapping[int, float], count: int) -> list[int]:
    """The ``count`` layers with the highest CKA (ties: the lower layer), sorted.

    Example:
        >>> choose_ffn_layers({1: 0.5, 2: 0.9, 3: 0.7, 4: 0.9}, 2)
        [2, 4]
    """
    ranked = sorted(cka, key=lambda layer: (-cka[layer], layer))
    return sorted(ranked[:count])


def check_ffn_layers(
    layers: Iterable[int], n_layers: int, *, shared: bool = False, family: str = "this"
) -> list[int]:
    """Validate ``--ffn.layers`` against the model: sorted layers in ``1..L``, or one clear InputError.

    Args:
        layers: The requested layers (``()`` means none).
        n_layers: ``L`` of the pre-trained model.
        shared: The family shares one FFN across all layers (ALBERT): all or none.
        family: Named in the error.

    Example:
        >>> check_ffn_layers((5, 2, 5), 6)
        [2, 5]
        >>> check_ffn_layers((0, 7), 6)
        Traceback (most recent call last):
        ...
        tunescope.errors.InputError: --ffn.layers 0,7 out of range: this model's transformer layers are 1..6 (0, the embedding output, has no FFN)
    """  # noqa: E501
    chosen = sorted({int(layer) for layer in layers})
    bad = [layer for layer in chosen if not 1 <= layer <= n_layers]
    if bad:
        raise InputError(
            f"--ffn.layers {','.join(map(str, bad))} out of range: this model's transformer layers are "
            f"1..{n_layers} (0, the embedding output, has no FFN)"
        )
    if shared and chosen and chosen != list(range(1, n_layers + 1)):
        every = ",".join(map(str, range(1, n_layers + 1)))
        raise InputError(
            f"--ffn.layers: {family} shares one FFN across all {n_layers} layers, so it can only be removed "
            f"from all of them; pass --ffn.layers {every} or leave it out"
        )
    return chosen
