"""Stage options: declared once, as a small frozen dataclass per stage, read from flags or a TOML file.

A stage that has options of its own declares them as a frozen dataclass whose fields are made by
:func:`option` (default, help, and how to read the field from a command-line string) and names it in
``Stage(options=...)``. Everything else follows from that one declaration:

* ``AnalyzeConfig(options={"variability": {"budget": 3}})`` (or an instance of the dataclass) and
  ``config.options_for("variability").budget``; the values are checked when the config is made;
* the ``analyze`` command gets one flag per field, ``--<stage>.<field>`` (``--variability.budget 3``);
* a TOML file given with ``--config FILE`` holds the same values, one table per stage::

      task = "movie-sentiment"
      limit = 500

      [variability]
      budget = 3

* the manifest and the "what changed" note name them ``variability.budget``.

A field's value is read from a string by its ``parse`` function when it has one, else by its type
(``int``, ``float``, ``bool``, ``str``, ``tuple[str, ...]`` and ``tuple[int, ...]`` as comma lists, and
``none`` for an optional field); a TOML value of the right type is taken as it is.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunescope.errors import InputError, UnknownNameError

__all__ = [
    "option",
    "OptionSpec",
    "specs",
    "make_options",
    "option_values",
    "parse_text",
    "read_config_file",
]

_NONE_WORDS = ("none", "")


def option(
    default: Any,
    *,
    help: str,  # noqa: A002  (the name every CLI library uses)
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A field of a stage's options dataclass.

    Args:
        default: the value when neither a flag nor a file sets it (immutable: tuples, not lists).
        help: one line for ``--help``.
        parse: reads the field from a command-line or TOML string (default: by the field's type).
        metavar: how ``--help`` shows the value (default: from the type).
        aliases: older flag names that still work (``--budget`` for ``--variability.budget``).
    """
    meta = {"help": help, "parse": parse, "metavar": metavar, "aliases": aliases}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One field of a stage's options, as the CLI and the config file see it."""

    stage: str
    name: str
    hint: Any
    default: Any
    help: str
    parse: Callable[[str], Any] | None
    metavar: str | None
    aliases: tuple[str, ...]

    @property
    def key(self) -> str:
        """``variability.budget``: the flag (after ``--``), the manifest key and the TOML path."""
        return f"{self.stage}.{self.name}"

    @property
    def flag(self) -> str:
        return f"--{self.stage}.{self.name.replace('_', '-')}"

    def from_text(self, text: str) -> Any:
        """The value a command-line string stands for."""
        if self.parse is not None:
            return self.parse(text)
        return parse_text(text, self.hint, self.flag)


def specs(stage: str, cls: type) -> list[OptionSpec]:
    """The fields of ``cls`` (a stage's options dataclass), in declaration order."""
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    out = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        out.append(
            OptionSpec(
                stage=stage,
                name=field.name,
                hint=hints[field.name],
                default=field.default,
                help=meta.get("help", ""),
                parse=meta.get("parse"),
                metavar=meta.get("metavar"),
                aliases=tuple(meta.get("aliases", ())),
            )
        )
    return out


def make_options(stage: str, cls: type, given: Any) -> Any:
    """An instance of ``cls`` from an instance, ``None`` (the defaults) or a mapping of field values.

    A mapping may hold typed values (from Python or TOML) or strings (read as the flag would read
    them). Unknown field names, and values of the wrong type, raise one error naming the option.
    """
    if given is None:
        return cls()
    if isinstance(given, cls):
        return given
    if not isinstance(given, Mapping):
        raise InputError(
            f"options for stage {stage} must be a {cls.__name__} or a mapping of its fields, "
            f"got {type(given).__name__}"
        )
    fields = {spec.name: spec for spec in specs(stage, cls)}
    values: dict[str, Any] = {}
    for name, value in given.items():
        if name not in fields:
            raise UnknownNameError(f"option of stage {stage}", str(name), fields, hint="fix the option name")
        spec = fields[name]
        is_text = isinstance(value, str)
        values[name] = spec.from_text(value) if is_text else _typed(value, spec.hint, spec.flag)
    return cls(**values)


def option_values(stage: str, instance: Any) -> dict[str, Any]:
    """``{"variability.budget": 2, ...}``: the options as flat JSON values (tuples become lists)."""
    fields = dataclasses.fields(instance)
    return {f"{stage}.{field.name}": _plain(getattr(instance, field.name)) for field in fields}


def parse_text(text: str, hint: Any, flag: str) -> Any:
    """Read ``text`` as a value of type ``hint`` (see the module docstring); ``flag`` names the option."""
    args = typing.get_args(hint)
    if _is_optional(hint):
        if text.strip().lower() in _NONE_WORDS:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            item = args[0] if args else str
            parts = [p.strip() for p in text.split(",") if p.strip()]
            if text.strip().lower() == "none":
                parts = []
            return tuple(parse_text(p, item, flag) for p in parts)
        if hint is bool:
            word = text.strip().lower()
            if word in ("true", "yes", "1", "on"):
                return True
            if word in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        if hint in (int, float):
            return hint(text)
        if hint is str:
            return text.strip()
        if hint is Path:
            return Path(text)
    except ValueError:
        raise InputError(f"{flag} takes {_describe(hint)}, got {text!r}") from None
    raise InputError(f"{flag}: options of type {hint} cannot be read from text")


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a TOML run configuration: ``(shared values, {stage: {option: value}})``.

    Top-level keys are ``AnalyzeConfig`` fields; each table (``[variability]``) holds one stage's
    options. The caller checks the names against the config and the stages.

    Raises:
        InputError: the file is missing, unreadable or not valid TOML (with the line of the error).
    """
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file; give a TOML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--config {path}: cannot be read ({err}); give a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"--config {path} is not valid TOML: {err}; fix the file") from None
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    stages = {k: v for k, v in data.items() if isinstance(v, dict)}
    return shared, stages


def typed_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` (a Python or TOML value) checked against ``hint``; strings are read as flags are."""
    if isinstance(value, str):
        return parse_text(value, hint, where)
    return _typed(value, hint, where)


# ------------------------------------------------------------------------------------------------
def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        item = (typing.get_args(hint) or (str,))[0]
        return f"a comma-separated list of {_describe(item)}s"
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a word", Path: "a path"}
    return names.get(hint, str(hint))


def _typed(value: Any, hint: Any, where: str) -> Any:
    if _is_optional(hint):
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        item = (typing.get_args(hint) or (str,))[0]
        return tuple(typed_value(v, item, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, Path):
        return value
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise InputError(f"{where} takes {_describe(hint)}, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
