"""One module per stage's report section; importing this package registers their builders."""

from tunescope.report.sections import layers, similarity, truncation  # noqa: F401
