"""tunescope: see what fine-tuning did inside a transformer encoder, layer by layer and head by head.

The public API, re-exported here; implementations live in the modules named in DESIGN.md.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from tunescope.data import TASKS, Examples, Task, get_task, load_file
from tunescope.errors import TunescopeError
from tunescope.extract import POOLINGS, Representations, extract
from tunescope.finetune import FinetuneConfig, FinetuneResult
from tunescope.finetune import finetune as finetune
from tunescope.inference import evaluate
from tunescope.layerstats import layer_statistics
from tunescope.metrics import compute_metric
from tunescope.models import Encoder, HeadGates, get_adapter, load_classifier, load_encoder, mask_heads
from tunescope.pipeline import AnalyzeConfig, analyze
from tunescope.report import build_report

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
    # data
    "Task",
    "Examples",
    "TASKS",
    "get_task",
    "load_file",
    # extraction and statistics
    "extract",
    "Representations",
    "POOLINGS",
    "layer_statistics",
    # fine-tuning and evaluation
    "finetune",
    "FinetuneConfig",
    "FinetuneResult",
    "evaluate",
    "compute_metric",
    # pipeline and report
    "AnalyzeConfig",
    "analyze",
    "build_report",
]
