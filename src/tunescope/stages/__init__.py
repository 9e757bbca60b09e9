"""The analysis stages ``analyze`` runs, in order. Importing this package registers them.

Each stage is one module: a function ``run(ctx) -> list[Table]`` and a :func:`register_stage` call.
Its report section is a builder in ``report/sections/<name>.py`` (registered with
:func:`tunescope.report._section.section`) and a template block ``report/templates/sections/<name>.html.j2``.
"""

from tunescope.stages import layers, similarity, truncation  # noqa: F401  (order = run order)
