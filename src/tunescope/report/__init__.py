"""The HTML report: figures drawn from ``RUN/results`` and one self-contained ``report.html``.

The report computes no results and imports no stage. Each stage package carries its own section: a
``section.py`` whose ``build(sec)`` reads the stage's tables, draws its figures and returns the values
its ``section.html.j2`` shows; :func:`build_report` finds them through the stage registry.
"""

from tunescope.report.build import build_report

__all__ = ["build_report"]
