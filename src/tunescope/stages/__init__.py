"""The analysis stages ``analyze`` runs, in order. Importing this package registers them.

Each stage is one module: a function ``run(ctx) -> list[Table]`` and a :func:`register_stage` call.
Its report section is ``report/templates/sections/<name>.html.j2`` plus, where it draws figures, an entry in
:data:`tunescope.report.SECTIONS`.
"""

from tunescope.stages import layers, similarity, truncation  # noqa: F401  (order = run order)
