"""The analysis stages ``analyze`` runs, in order. Importing this package registers them.

Each stage is one module: a function ``run(ctx) -> list[Table]`` and a :func:`register_stage` call.
Its report section is a builder in ``report/sections/<name>.py`` (registered with
:func:`tunescope.report._section.section`) and a template block ``report/templates/sections/<name>.html.j2``.
Stages run in the order of :data:`ORDER`: a stage that needs another's model or tables comes after it.
"""

import importlib

ORDER = (
    "finetune",
    "layers",
    "similarity",
    "truncation",
    "ablation",
    "ffn",
    "probes",
    "variability",
    "selection",
    "domains",
)

for _name in ORDER:
    importlib.import_module(f"tunescope.stages.{_name}")
