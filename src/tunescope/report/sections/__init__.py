"""One module per stage's report section; importing this package registers their builders."""

from tunescope.report.sections import finetune, layers, similarity, truncation  # noqa: F401
