"""Input checks shared by every measure: one clear `MeasureError`, raised before any work is done."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from tunescope.errors import MeasureError

__all__ = [
    "as_matrix",
    "as_layers",
    "check_examples",
    "compute_dtype",
    "center",
    "check_variance",
    "Layers",
]

Layers = Sequence[Tensor] | Mapping[Any, Tensor] | Tensor


def as_matrix(x: object, name: str = "x") -> Tensor:
    """Return ``x`` as a finite 2-D floating tensor of shape (n_examples, d), or raise `MeasureError`.

    Integer and boolean tensors are cast to float64; complex tensors are refused.
    """
    if not isinstance(x, Tensor):
        raise MeasureError(f"{name} must be a torch.Tensor of shape (n_examples, d); got {type(x).__name__}")
    if x.dim() != 2:
        hint = " (for one feature per example use x[:, None])" if x.dim() == 1 else ""
        raise MeasureError(
            f"{name} must be 2-D (n_examples, d); got {x.dim()}-D with shape {tuple(x.shape)}{hint}"
        )
    if x.is_complex():
        raise MeasureError(f"{name} is complex ({x.dtype}); similarity measures need real values")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if x.shape[1] == 0:
        raise MeasureError(f"{name} has no features (shape {tuple(x.shape)})")
    # one reduction is cheap; only if the sum is not finite (NaN/inf, or overflow) look element-wise
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise MeasureError(f"{name} contains {bad} NaN or infinite values; remove or impute them first")
    return x


def as_layers(reps: Layers, name: str) -> list[Tensor]:
    """Turn a sequence or mapping of per-layer (n_examples, d_l) tensors into a checked list."""
    if isinstance(reps, Tensor):
        if reps.dim() == 3:  # (n_layers, n_examples, d): accept the stacked form too
            reps = list(reps.unbind(0))
        elif reps.dim() == 2:  # one layer
            reps = [reps]
        else:
            raise MeasureError(
                f"{name} must be a sequence or mapping of per-layer (n_examples, d) tensors, "
                f"or one (n_layers, n_examples, d) tensor; got shape {tuple(reps.shape)}"
            )
    items = list(reps.items()) if isinstance(reps, Mapping) else list(enumerate(reps))
    if not items:
        raise MeasureError(f"{name} holds no layers")
    layers = [as_matrix(t, f"{name}[{key!r}]") for key, t in items]
    n = layers[0].shape[0]
    for (key, _), t in zip(items, layers, strict=True):
        if t.shape[0] != n:
            raise MeasureError(
                f"every layer of {name} needs the same number of examples; "
                f"{name}[{key!r}] has {t.shape[0]}, the first layer {n}"
            )
        if t.device != layers[0].device:
            raise MeasureError(f"all layers must be on one device; {name}[{key!r}] is on {t.device}")
    return layers


def check_examples(n_x: int, n_y: int, min_n: int, what: str) -> None:
    """Refuse different example counts, or fewer than ``min_n`` examples."""
    if n_x != n_y:
        raise MeasureError(
            f"{what}: x and y must hold the same examples in the same order; got {n_x} and {n_y} rows"
        )
    if n_x < min_n:
        raise MeasureError(f"{what} needs at least {min_n} examples; got {n_x}")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype products are computed in: float64 if any input is float64, else float32.

    Half precision inputs are promoted to float32 (their matmul is neither accurate nor fast on CPU).
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def center(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Subtract the column means in ``dtype``, twice.

    Subtracting the rounded mean is exact where it matters: when the mean is large next to the spread,
    ``x`` and the mean are within a factor of two and the subtraction has no rounding error (Sterbenz
    lemma); a second pass removes the residual mean left by rounding the first. Measured on float32
    data with offsets up to 1e4 standard deviations, CKA from these values differs from CKA of the
    exactly (float64) centered data by < 1e-9. No float64 copy of the data is made.

    Returns:
        ``(x_centered, mean)``: (n_examples, d) and (d,), both in ``dtype``.
    """
    x = x.to(dtype)
    mean = x.mean(dim=0)
    centered = x - mean
    residual = centered.mean(dim=0)
    centered -= residual
    return centered, mean.add_(residual)


def check_variance(centered_sq: Tensor, raw_sq: Tensor, n: int, labels: Sequence[str], what: str) -> None:
    """Refuse representations whose total variance is zero (to float64 rounding of the mean).

    Args:
        centered_sq: (n_layers,) sums of squares of the centered values, ``||X - mean||_F^2``.
        raw_sq: (n_layers,) sums of squares of the raw values, ``||X||_F^2``.
        n: number of examples.
        labels: one name per layer, used in the message.
        what: the measure's name, used in the message.
    """
    eps = torch.finfo(torch.float64).eps
    tol = (n * eps) ** 2 * raw_sq
    zero = (centered_sq <= tol).nonzero().flatten().tolist()
    if zero:
        names = ", ".join(labels[i] for i in zero)
        raise MeasureError(
            f"{what} is undefined for a representation with zero variance (every example identical): {names}"
        )
