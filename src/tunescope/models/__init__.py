"""Encoders: loading (path, hub id or memory), architecture adapters and head gates."""

from __future__ import annotations

from tunescope.models.adapters import (
    ADAPTERS,
    ArchitectureAdapter,
    FFNParts,
    SharedLayerAdapter,
    get_adapter,
)
from tunescope.models.gates import HeadGates, mask_heads
from tunescope.models.loading import (
    Encoder,
    default_model_path,
    from_model,
    load_classifier,
    load_encoder,
    model_fingerprint,
)

__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "Encoder",
    "FFNParts",
    "HeadGates",
    "SharedLayerAdapter",
    "default_model_path",
    "from_model",
    "get_adapter",
    "load_classifier",
    "load_encoder",
    "mask_heads",
    "model_fingerprint",
]
