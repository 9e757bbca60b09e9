"""The ``--<stage>.<option>`` flags of ``analyze``, made from the stages' option declarations.

:class:`StageOptionsCommand` is the click command class of ``analyze``: the first time its parameters are
asked for (parsing a command line, or ``--help``), it discovers the stages and adds one flag per field of
each stage's options dataclass (:mod:`tunescope.options`), plus the field's older aliases, grouped by
stage in the help. The values given are taken out of the parameters before the command function runs
and handed to it through :func:`given_stage_options`, as ``{stage: {option: text}}``; the strings are
read by the options' own parsers when the config is made. Only ``analyze`` pays for discovery: the
other commands, and ``tunescope --help``, never build these flags.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand
from typer.models import ParamMeta

__all__ = ["StageOptionsCommand", "given_stage_options", "explicit_params"]

_META = "tunescope.stage_options"
_PREFIX = "stage_option__"


class StageOptionsCommand(TyperCommand):
    """A typer command whose parameters also hold every stage's options, as ``--stage.option`` flags."""

    _added = False

    def get_params(self, ctx: Any) -> list[Any]:
        if not self._added:
            self._added = True
            self.params.extend(_stage_flags())
        return super().get_params(ctx)

    def invoke(self, ctx: Any) -> Any:
        given: dict[str, dict[str, str]] = {}
        for name in [n for n in ctx.params if n.startswith(_PREFIX)]:
            value = ctx.params.pop(name)
            if value is not None:
                stage, option = name.removeprefix(_PREFIX).split("__", 1)
                given.setdefault(stage, {})[option] = value
        ctx.meta[_META] = given
        return super().invoke(ctx)


def given_stage_options(ctx: typer.Context) -> dict[str, dict[str, str]]:
    """The stage options given on the command line of the running command: ``{stage: {option: text}}``."""
    return dict(ctx.meta.get(_META, {}))


def explicit_params(ctx: typer.Context) -> set[str]:
    """Names of the running command's parameters that the user gave (flag or environment variable)."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(name)
    return given


def _stage_flags() -> list[Any]:
    from tunescope.options import specs
    from tunescope.pipeline import ordered
    from tunescope.stages import discover

    stages = discover()
    flags: list[Any] = []
    for name in ordered():
        cls = stages[name].options
        if cls is None:
            continue
        for spec in specs(name, cls):
            shown = spec.default
            if isinstance(shown, tuple):
                shown = ",".join(map(str, shown)) if shown else "none"
            declared = typer.Option(
                None,
                spec.flag,
                *spec.aliases,
                help=f"{spec.help} \\[default: {'chosen by the stage' if shown is None else shown}]",
                metavar=spec.metavar or "VALUE",
                rich_help_panel=f"Stage {name}",
            )
            meta = ParamMeta(name=f"{_PREFIX}{name}__{spec.name}", default=declared, annotation=str | None)
            flags.append(_click_param(meta))
    return flags


def _click_param(meta: ParamMeta) -> Any:
    """typer's conversion of one declared parameter into a click parameter (its name moved in 0.29)."""
    import typer.main

    convert = getattr(typer.main, "get_click_param", None) or typer.main._get_param
    made = convert(meta)
    return made[0] if isinstance(made, tuple) else made
