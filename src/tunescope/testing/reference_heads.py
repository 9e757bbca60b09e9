"""Slow, obviously-correct references for `tunescope.heads`.

Independent of that module on purpose (it does not import it): batches are tokenised here with the
tokenizer's own padding, the task loss is the model's own ``labels=`` loss, and derivatives with respect
to the head gates are taken by central finite differences instead of backpropagation. Run the model in
float64 (``encoder.model.double()``) so that differences with ``eps = 1e-5`` are exact to ~1e-9.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tunescope.data.examples import Examples
from tunescope.models.gates import HeadGates
from tunescope.models.loading import Encoder

__all__ = ["ablation_importance", "finite_difference_importance", "task_loss"]

BatchLoss = Callable[[Encoder, Sequence[int]], tuple[torch.Tensor, int]]
"""``loss(encoder, example_indices) -> (mean loss of that batch, its non-padding token count)``."""


def task_loss(examples: Examples, max_length: int = 128) -> BatchLoss:
    """The classifier's own mean loss on a batch of labelled ``examples``, and the batch's tokens.

    The batch is tokenised by the tokenizer with ``padding=True``; the loss is ``model(...,
    labels=...).loss`` (cross-entropy over the batch's examples for class labels).
    """
    if examples.labels is None:
        raise ValueError("task_loss needs labelled examples")
    labels = examples.labels

    def loss(encoder: Encoder, indices: Sequence[int]) -> tuple[torch.Tensor, int]:
        texts = [examples.texts[i] for i in indices]
        pairs = None if examples.text_pairs is None else [examples.text_pairs[i] for i in indices]
        batch = encoder.tokenizer(
            texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        target = torch.as_tensor(labels[list(indices)])
        out = encoder.model(**batch, labels=target).loss
        return out, int(batch["attention_mask"].sum())

    return loss


def _gated_loss(encoder: Encoder, gates: torch.Tensor, loss: BatchLoss, indices: Sequence[int]) -> float:
    with torch.no_grad(), HeadGates(encoder, gates):
        return float(loss(encoder, indices)[0])


def finite_difference_importance(
    encoder: Encoder,
    batches: Sequence[Sequence[int]],
    loss: BatchLoss,
    *,
    eps: float = 1e-5,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_b |d L̄_b / d g_{l,h}| / sum_b T_b`` by central differences, one gate at a time.

    For every batch ``b`` and head ``(l, h)``:
    ``d L̄_b / d g_{l,h} ≈ (L̄_b(g + eps e_{l,h}) - L̄_b(g - eps e_{l,h})) / (2 eps)``, ``g`` = ``at``
    (default all ones), float64 gates.

    Args:
        encoder: The model (put it in float64 first for exact differences).
        batches: Example indices of each batch.
        loss: A :data:`BatchLoss`, e.g. :func:`task_loss`.
        eps: Step of the central difference.
        at: Gate values to differentiate at, ``(n_layers, n_heads)``.

    Returns:
        ``(n_layers, n_heads)`` float64.
    """
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    base = torch.ones(n_layers, n_heads, dtype=torch.float64) if at is None else at.double().clone()
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    tokens = 0
    for indices in batches:
        with torch.no_grad():
            tokens += loss(encoder, indices)[1]
        for layer in range(n_layers):
            for head in range(n_heads):
                plus, minus = base.clone(), base.clone()
                plus[layer, head] += eps
                minus[layer, head] -= eps
                up = _gated_loss(encoder, plus, loss, indices)
                down = _gated_loss(encoder, minus, loss, indices)
                total[layer, head] += abs(up - down) / (2 * eps)
    return total / tokens


def ablation_importance(encoder: Encoder, batches: Sequence[Sequence[int]], loss: BatchLoss) -> torch.Tensor:
    """Loss increase when one head is switched off: ``mean_b L̄_b(g = 1 - e_{l,h}) - mean_b L̄_b(g = 1)``.

    ``L * H + 1`` passes over the batches (the full model once, then each head gated to zero alone).

    Returns:
        ``(n_layers, n_heads)`` float64 (negative where removing the head lowers the loss).
    """
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    ones = torch.ones(n_layers, n_heads, dtype=torch.float64)

    def mean_loss(gates: torch.Tensor) -> float:
        values: list[Any] = [_gated_loss(encoder, gates, loss, indices) for indices in batches]
        return sum(values) / len(values)

    full = mean_loss(ones)
    out = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for layer in range(n_layers):
        for head in range(n_heads):
            gates = ones.clone()
            gates[layer, head] = 0.0
            out[layer, head] = mean_loss(gates) - full
    return out
