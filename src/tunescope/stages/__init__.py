"""The analysis stages ``analyze`` runs, found by discovery.

A stage is a package: its ``__init__`` defines ``STAGE = Stage(...)`` (name, title, ``run(ctx)``, what it
``needs`` and what it comes ``after``, its up-front ``check``), and next to it ``section.py`` (``build(sec)``,
the report section) and ``section.html.j2`` (the section's template). :func:`discover` finds every package
in this folder and every package named in the ``tunescope.stages`` entry-point group, so a third-party
package adds a stage without editing tunescope::

    [project.entry-points."tunescope.stages"]
    attention_entropy = "my_package.entropy_stage"

The run order comes from what the stages declare (:func:`tunescope.pipeline.ordered`), never from a list.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import pkgutil
from types import ModuleType

from tunescope.errors import InputError
from tunescope.pipeline import STAGES, Stage

__all__ = ["ENTRY_POINTS", "discover"]

ENTRY_POINTS = "tunescope.stages"
logger = logging.getLogger(__name__)
_found: set[str] = set()  # packages discovery has registered already


def discover() -> dict[str, Stage]:
    """Register every stage package found here and in the ``tunescope.stages`` entry points (once each).

    A stage registered beforehand under the same name (:func:`tunescope.pipeline.register_stage`) is
    kept, so a test or a notebook can replace one.

    Raises:
        InputError: an entry point does not load, or holds no ``STAGE``.
    """
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        if info.ispkg and info.name not in _found:
            _add(importlib.import_module(info.name), info.name)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if entry.value in _found:
            continue
        try:
            loaded = entry.load()
        except Exception as err:  # a third-party package: say which one, whatever it raised
            raise InputError(
                f"the stage entry point {entry.name!r} ({entry.value}) does not load: {err}; fix or "
                "uninstall the package that declares it"
            ) from err
        if not isinstance(loaded, ModuleType):
            raise InputError(f"the stage entry point {entry.name!r} must name a module (a stage package)")
        _add(loaded, entry.value)
    return STAGES


def _add(module: ModuleType, name: str) -> None:
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise InputError(f"{name} is a stage package without STAGE = Stage(...); declare one")
    _found.add(name)
    if stage.package is None:
        stage = dataclasses.replace(stage, package=module.__name__)
    STAGES.setdefault(stage.name, stage)
