"""Encoders: loading (path, hub id or memory), architecture adapters, head gates, saved surgery
(FFN removal, head pruning)."""

from __future__ import annotations

from tunescope.models.adapters import (
    ADAPTERS,
    ArchitectureAdapter,
    FFNParts,
    SharedLayerAdapter,
    get_adapter,
)
from tunescope.models.gates import HeadGates, mask_heads
from tunescope.models.head_pruning import PRUNED_HEADS_KEY, pruned_heads
from tunescope.models.loading import (
    Encoder,
    default_model_path,
    from_model,
    load_classifier,
    load_encoder,
    load_trained_classifier,
    model_fingerprint,
    require_classifier,
    resolve_device,
)
from tunescope.models.saved_surgery import REMOVED_FFN_KEY, apply_saved_surgery, removed_ffn_layers

__all__ = [
    "ADAPTERS",
    "PRUNED_HEADS_KEY",
    "REMOVED_FFN_KEY",
    "ArchitectureAdapter",
    "Encoder",
    "FFNParts",
    "HeadGates",
    "SharedLayerAdapter",
    "apply_saved_surgery",
    "default_model_path",
    "from_model",
    "get_adapter",
    "load_classifier",
    "resolve_device",
    "load_encoder",
    "load_trained_classifier",
    "mask_heads",
    "model_fingerprint",
    "pruned_heads",
    "removed_ffn_layers",
    "require_classifier",
]
