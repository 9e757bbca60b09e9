"""tunescope: see what fine-tuning did inside a transformer encoder."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunescope")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
