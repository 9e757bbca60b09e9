"""One module per stage's report section; importing this package registers their builders."""

from tunescope.report.sections import (  # noqa: F401
    ablation,
    domains,
    ffn,
    finetune,
    layers,
    probes,
    selection,
    similarity,
    truncation,
    variability,
)
