"""Errors tunescope raises for problems the user can fix.

Every error says what is wrong and how to fix it in one line; the CLI prints that line and exits with
code 2. Library code never uses ``assert`` for user input.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "TunescopeError",
    "InputError",
    "DataError",
    "UnknownNameError",
    "ModelLoadError",
    "OfflineModelError",
    "UnsupportedArchitectureError",
    "TokenizerMismatchError",
    "MeasureError",
    "CacheError",
    "RunFolderError",
    "MissingExtraError",
]


class TunescopeError(Exception):
    """Base class of every error tunescope raises on purpose."""

    exit_code: int = 2


class InputError(TunescopeError, ValueError):
    """An argument or option has a value tunescope cannot use."""


class DataError(InputError):
    """A data file or data set is unusable (missing column, empty, bad encoding, labels that do not fit)."""


class UnknownNameError(InputError, KeyError):
    """A name (task, pooling, measure, architecture, ...) is not in its registry."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = "") -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        message = f"unknown {kind} {name!r}; choose one of: {', '.join(self.valid)}"
        super().__init__(message + (f" ({hint})" if hint else ""))

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


class ModelLoadError(InputError):
    """A model or tokenizer could not be loaded from the given path or id."""


class OfflineModelError(ModelLoadError):
    """A hub id was given while the hub cannot be reached and no local copy exists."""


class UnsupportedArchitectureError(InputError):
    """The model's architecture has no adapter."""


class TokenizerMismatchError(ModelLoadError):
    """The tokenizer does not fit the model (vocabulary larger than the embedding table)."""


class MeasureError(InputError):
    """Inputs to a measure are invalid (shape mismatch, too few examples, NaN, zero variance)."""


class CacheError(TunescopeError):
    """A cache file is unreadable or does not match what it claims to hold."""


class RunFolderError(InputError):
    """A run folder is not one, or its manifest or a table it vouches for is damaged."""


class MissingExtraError(TunescopeError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package {package!r}; install it with "
            f"`pip install 'tunescope[{extra}]'`"
        )
