"""Per-layer descriptive statistics of representations: size, anisotropy and dimensionality.

These are the first things to look at in a layer: how large its vectors are, how much they all point the
same way (anisotropy; Ethayarajh 2019 measured it as the mean cosine similarity between random pairs), and
how many directions carry their variance (participation ratio of the covariance spectrum).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tunescope.errors import MeasureError

__all__ = ["layer_statistics", "all_layer_statistics", "STATISTICS"]

STATISTICS = ("mean_norm", "norm_std", "mean_cosine", "top_pc_fraction", "participation_ratio")


def layer_statistics(x: torch.Tensor) -> dict[str, float]:
    """Descriptive statistics of one layer's representations, computed in float64.

    - ``mean_norm``, ``norm_std``: mean and (population) standard deviation of the row norms ``||x_i||``.
    - ``mean_cosine``: mean cosine similarity over distinct pairs ``i != j``, from
      ``(||sum_i u_i||^2 - n) / (n (n - 1))`` with ``u_i = x_i / ||x_i||``.
    - ``top_pc_fraction``: share of the total variance on the first principal component,
      ``lambda_1 / sum_k lambda_k`` for the eigenvalues of the covariance of ``x``.
    - ``participation_ratio``: ``(sum_k lambda_k)^2 / sum_k lambda_k^2``, between 1 and ``min(n - 1, d)``.

    Args:
        x: (n_examples, d_model) representations of one layer; n_examples >= 2.

    Example:
        >>> stats = layer_statistics(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        >>> stats["mean_norm"], stats["mean_cosine"]
        (1.5, 0.0)
    """
    if x.ndim != 2:
        raise MeasureError(
            f"layer statistics need a 2-D (n_examples, d_model) tensor, got shape {tuple(x.shape)}"
        )
    n = x.shape[0]
    if n < 2:
        raise MeasureError(f"layer statistics need at least 2 examples, got {n}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise MeasureError("representations contain NaN or inf; check the model's dtype and inputs")
    norms = x.norm(dim=1)
    if (norms == 0).any():
        raise MeasureError("a representation is the zero vector, so its cosine is undefined")
    units = x / norms.unsqueeze(1)
    total = units.sum(0)
    mean_cosine = (total @ total - n) / (n * (n - 1))
    centred = x - x.mean(0, keepdim=True)
    # covariance eigenvalues = squared singular values of the centred data / n
    eigenvalues = torch.linalg.svdvals(centred).square() / n
    variance = eigenvalues.sum()
    if variance <= 0:
        raise MeasureError("all representations are identical (zero variance); dimensionality is undefined")
    return {
        "mean_norm": norms.mean().item(),
        "norm_std": norms.std(correction=0).item(),
        "mean_cosine": mean_cosine.item(),
        "top_pc_fraction": (eigenvalues[0] / variance).item(),
        "participation_ratio": (variance.square() / eigenvalues.square().sum()).item(),
    }


def all_layer_statistics(reps: Mapping[int, torch.Tensor]) -> dict[int, dict[str, float]]:
    """:func:`layer_statistics` for every layer of a mapping ``layer -> (n_examples, d_model)``."""
    return {layer: layer_statistics(x) for layer, x in reps.items()}
