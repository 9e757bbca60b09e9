"""The HTML report: figures drawn from ``RUN/results`` and one self-contained ``report.html``.

The report computes no results. Each section has a builder in :data:`SECTIONS` that reads the stage's
tables, draws its figures (saved to ``RUN/figures``) and returns the values its template block
(``templates/sections/<name>.html.j2``) shows.
"""

from tunescope.report.build import SECTIONS, build_report

__all__ = ["SECTIONS", "build_report"]
