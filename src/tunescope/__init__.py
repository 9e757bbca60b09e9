"""tunescope: see what fine-tuning did inside a transformer encoder, layer by layer and head by head.

The public API, re-exported here and imported on first use; implementations live in the modules named
in DESIGN.md. ``tunescope.finetune`` and ``tunescope.extract`` are modules, never shadowed by the
functions of the same name: call ``tunescope.finetune.finetune(...)`` and ``tunescope.extract.extract(...)``
(importing a submodule sets the package attribute of its name, so a function there would not stay put).
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# name -> module: imported on first use, so that `import tunescope` (and `tunescope --help`) does not
# load torch and transformers until something needs them
_LAZY = {
    "TASKS": "tunescope.data",
    "Examples": "tunescope.data",
    "Task": "tunescope.data",
    "get_task": "tunescope.data",
    "load_file": "tunescope.data",
    "POOLINGS": "tunescope.extract",
    "Representations": "tunescope.extract",
    "FinetuneConfig": "tunescope.finetune",
    "FinetuneResult": "tunescope.finetune",
    "layer_statistics": "tunescope.layerstats",
    "compute_metric": "tunescope.metrics",
    "evaluate": "tunescope.inference",
    "Encoder": "tunescope.models",
    "HeadGates": "tunescope.models",
    "get_adapter": "tunescope.models",
    "load_classifier": "tunescope.models",
    "load_encoder": "tunescope.models",
    "mask_heads": "tunescope.models",
    "resolve_device": "tunescope.models",
    "AnalyzeConfig": "tunescope.pipeline",
    "analyze": "tunescope.pipeline",
    "build_report": "tunescope.report",
    # one entry point (or a few) per lens
    "cka_matrix": "tunescope.similarity",
    "linear_cka": "tunescope.similarity",
    "rbf_cka": "tunescope.similarity",
    "MinibatchCKA": "tunescope.similarity",
    "rsa": "tunescope.similarity",
    "find_blocks": "tunescope.similarity",
    "LayerProbes": "tunescope.probing",
    "probe_layers": "tunescope.probing",
    "layer_variability": "tunescope.variability",
    "select_layers": "tunescope.variability",
    "truncation_sweep": "tunescope.truncation",
    "ffn_cka": "tunescope.ffn",
    "truncate": "tunescope.surgery",
    "remove_ffn": "tunescope.surgery",
    "restore_layers": "tunescope.surgery",
    "reinit_layers": "tunescope.surgery",
    "freeze_layers": "tunescope.surgery",
    "export": "tunescope.surgery",
    "head_importance": "tunescope.heads",
    "prune_curve": "tunescope.heads",
    "coherence": "tunescope.heads",
    "prune_heads": "tunescope.surgery",
    "format_layers": "tunescope.locations",
    "parse_layers": "tunescope.locations",
}

# submodules reachable as attributes without importing them first
_SUBMODULES = frozenset(
    {
        "data",
        "extract",
        "ffn",
        "finetune",
        "heads",
        "inference",
        "layerstats",
        "locations",
        "metrics",
        "models",
        "options",
        "pipeline",
        "probing",
        "report",
        "runfolder",
        "similarity",
        "surgery",
        "truncation",
        "variability",
    }
)

if TYPE_CHECKING:
    from tunescope.data import TASKS, Examples, Task, get_task, load_file
    from tunescope.extract import POOLINGS, Representations
    from tunescope.ffn import ffn_cka
    from tunescope.finetune import FinetuneConfig, FinetuneResult
    from tunescope.heads import coherence, head_importance, prune_curve
    from tunescope.inference import evaluate
    from tunescope.layerstats import layer_statistics
    from tunescope.locations import format_layers, parse_layers
    from tunescope.metrics import compute_metric
    from tunescope.models import (
        Encoder,
        HeadGates,
        get_adapter,
        load_classifier,
        load_encoder,
        mask_heads,
        resolve_device,
    )
    from tunescope.pipeline import AnalyzeConfig, analyze
    from tunescope.probing import LayerProbes, probe_layers
    from tunescope.report import build_report
    from tunescope.similarity import MinibatchCKA, cka_matrix, find_blocks, linear_cka, rbf_cka, rsa
    from tunescope.surgery import (
        export,
        freeze_layers,
        prune_heads,
        reinit_layers,
        remove_ffn,
        restore_layers,
        truncate,
    )
    from tunescope.truncation import truncation_sweep
    from tunescope.variability import layer_variability, select_layers

from tunescope.errors import TunescopeError  # noqa: E402  (light; the lazy table comes first)


def __getattr__(name: str) -> Any:
    """Import the public name ``name`` from its module on first use (PEP 562)."""
    import importlib

    module = _LAZY.get(name)
    if module is None:
        if name in _SUBMODULES:  # `tunescope.extract.extract(...)` after a bare `import tunescope`
            return importlib.import_module(f"tunescope.{name}")
        raise AttributeError(f"module 'tunescope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


try:
    __version__ = version("tunescope")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "TunescopeError",
    # encoders
    "Encoder",
    "load_encoder",
    "load_classifier",
    "get_adapter",
    "HeadGates",
    "mask_heads",
    "resolve_device",
    # data
    "Task",
    "Examples",
    "TASKS",
    "get_task",
    "load_file",
    # extraction and statistics
    "Representations",
    "POOLINGS",
    "layer_statistics",
    # fine-tuning (the module tunescope.finetune: its function finetune.finetune) and evaluation
    "FinetuneConfig",
    "FinetuneResult",
    "evaluate",
    "compute_metric",
    # pipeline and report
    "AnalyzeConfig",
    "analyze",
    "build_report",
    # the lenses: similarity (Phang et al.; Kornblith et al.), probes (Merchant et al.), variability
    # (Xie et al.), truncation and FFN removal (Phang et al.; Sridhar & Sarah), surgery
    "cka_matrix",
    "linear_cka",
    "rbf_cka",
    "MinibatchCKA",
    "rsa",
    "find_blocks",
    "LayerProbes",
    "probe_layers",
    "layer_variability",
    "select_layers",
    "truncation_sweep",
    "ffn_cka",
    "truncate",
    "remove_ffn",
    "restore_layers",
    "reinit_layers",
    "freeze_layers",
    "export",
    "head_importance",
    "prune_curve",
    "coherence",
    "prune_heads",
    "format_layers",
    "parse_layers",
]
