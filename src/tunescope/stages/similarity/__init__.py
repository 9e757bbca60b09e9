"""Stage ``similarity``: every layer pair inside each model and between the two models, plus blocks.

Writes ``cka.csv`` (the measures of ``--similarity.measures``: linear CKA by default; Kornblith et al.
2019), ``rsa.csv`` (representational similarity analysis; Kriegeskorte et al. 2008, as used by Merchant
et al. 2020), ``blocks.csv`` (contiguous blocks of similar layers inside each model; Phang et al.
2021) with each block structure's ``margin`` over a smooth decay with layer distance, its bootstrap
``p_value`` (linear CKA only) and whether it is ``significant`` (`tunescope.similarity.blocks`), and
``layer_change.csv``: the same-layer linear CKA of the two models with a percentile-bootstrap interval
over examples. Both bootstraps share one set of ``AnalyzeConfig.n_boot`` resamples drawn with
``AnalyzeConfig.seed``, computed from Gram matrices of the run's representations
(`tunescope.similarity.bootstrap_linear_cka` with ``exact=None, centered=True``: exact resampling up to
400 examples, the linear bootstrap above, bias-corrected): no model runs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunescope.errors import InputError, UnknownNameError
from tunescope.options import option
from tunescope.pipeline import AnalyzeConfig, RunContext, Stage, Table

CKA_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "measure", "split", "value")
RSA_COLUMNS = ("model_a", "layer_a", "model_b", "layer_b", "rdm", "compare", "split", "value")
BLOCK_COLUMNS = (
    "model",
    "measure",
    "block",
    "first_layer",
    "last_layer",
    "score",
    "margin",
    "p_value",
    "n_boot",
    "significant",
)
CHANGE_COLUMNS = ("model_a", "model_b", "layer", "measure", "split", "value", "ci_low", "ci_high", "n_boot")
#: the measure the bootstrap is computed for (from Gram matrices; see the module docstring)
BOOT_MEASURE = "linear_cka"
DEBIASED = ":debiased"
# measures whose values are similarities in [0, 1] with 1 on the diagonal: blocks make sense for them
BLOCK_MEASURES = {"linear_cka", "rbf_cka", "minibatch_cka", "svcca", "pwcca"}


def parse_measure(spec: str) -> tuple[str, bool]:
    """``"linear_cka:debiased"`` -> ``("linear_cka", True)``; checks the name against the registry."""
    from tunescope.similarity import MEASURES

    name, debiased = (spec[: -len(DEBIASED)], True) if spec.endswith(DEBIASED) else (spec, False)
    valid = [m for m in MEASURES if m != "rsa"]
    if name not in valid:
        raise UnknownNameError(
            "similarity measure", spec, valid, hint="fix --similarity.measures (RSA is --similarity.rsa)"
        )
    return name, debiased


def parse_rsa(text: str) -> tuple[str, str] | None:
    """``"correlation,spearman"`` -> ``("correlation", "spearman")``; ``"none"`` -> ``None`` (no RSA)."""
    if text.strip().lower() in ("none", ""):
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise InputError(
            f"--similarity.rsa takes RDM,COMPARE such as correlation,spearman (or none); got {text!r}"
        )
    return parts[0], parts[1]


@dataclass(frozen=True)
class SimilarityOptions:
    """Options of the ``similarity`` stage (the ``domains`` stage uses the same RSA)."""

    measures: tuple[str, ...] = option(
        ("linear_cka",),
        help="Layer-similarity measures for cka.csv (comma list; NAME:debiased for the unbiased HSIC).",
        metavar="M1,M2",
        aliases=("--measure",),
    )
    rsa: tuple[str, str] | None = option(
        ("correlation", "spearman"),
        help="RDM,COMPARE of the RSA in rsa.csv and domains.csv, or none.",
        parse=parse_rsa,
        metavar="RDM,COMPARE",
        aliases=("--rsa",),
    )

    def __post_init__(self) -> None:
        if not self.measures:
            raise InputError("--similarity.measures needs at least one measure, e.g. linear_cka")
        for spec in self.measures:
            parse_measure(spec)
        if self.rsa is not None:
            from tunescope.similarity import COMPARISONS, RDM_METHODS

            if len(self.rsa) != 2:
                raise InputError(f"--similarity.rsa takes RDM,COMPARE (two names), got {self.rsa!r}")
            rdm, compare = self.rsa
            if rdm not in RDM_METHODS:
                raise UnknownNameError("RDM method", rdm, RDM_METHODS, hint="fix --similarity.rsa")
            if compare not in COMPARISONS:
                raise UnknownNameError("RDM comparison", compare, COMPARISONS, hint="fix --similarity.rsa")


def _pair_rows(reps: dict[str, Any], a: str, b: str, matrix: Any, **fields: Any) -> list[dict[str, Any]]:
    """One row per (layer of ``a``, layer of ``b``) of ``matrix``, with ``fields`` in every row."""
    return [
        {"model_a": a, "layer_a": la, "model_b": b, "layer_b": lb, **fields, "value": float(matrix[i, j])}
        for i, la in enumerate(reps[a].layers)
        for j, lb in enumerate(reps[b].layers)
    ]


def _block_rows(reps: Any, model: str, spec: str, matrix: Any, test: Any | None) -> list[dict[str, Any]]:
    """The contiguous blocks :func:`tunescope.similarity.find_blocks` finds in one model's matrix.

    ``test``: the model's `BlockTest` (linear CKA) or None (other measures: no p-value, and
    ``significant`` is the margin's alone).
    """
    from tunescope.similarity import find_blocks

    found = find_blocks(matrix)
    return [
        {
            "model": model,
            "measure": spec,
            "block": number,
            "first_layer": reps.layers[first],
            "last_layer": reps.layers[last],
            "score": found.score,
            "margin": found.margin,
            "p_value": None if test is None else test.p_value,
            "n_boot": None if test is None else test.n_boot,
            "significant": found.significant if test is None else test.significant,
        }
        for number, (first, last) in enumerate(found.blocks)
    ]


def _bootstrap(ctx: RunContext, reps: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One bootstrap of linear CKA over examples: each model's `BlockTest` and the layer_change rows."""
    from tunescope.similarity import BlockTest, bootstrap_linear_cka, percentile_interval
    from tunescope.similarity.blocks import pair_matrix

    config = ctx.config
    models = ctx.model_names()
    layers: list[Any] = []
    offset: dict[str, int] = {}
    for m in models:
        offset[m] = len(layers)
        layers += [reps[m][layer] for layer in reps[m].layers]
    within = {
        m: [
            (offset[m] + i, offset[m] + j)
            for i in range(len(reps[m].layers))
            for j in range(i + 1, len(reps[m].layers))
        ]
        for m in models
    }
    shared: list[int] = []
    cross: list[tuple[int, int]] = []
    if len(models) == 2:
        a, b = models
        shared = [x for x in reps[a].layers if x in reps[b].layers]
        cross = [(offset[a] + reps[a].layers.index(x), offset[b] + reps[b].layers.index(x)) for x in shared]
    pairs = [p for m in models for p in within[m]] + cross
    estimate, samples = bootstrap_linear_cka(
        layers, pairs, n_boot=config.n_boot, seed=config.seed, exact=None, centered=True
    )
    tests, start = {}, 0
    for m in models:
        count, n_layers = len(within[m]), len(reps[m].layers)
        if n_layers > 1:
            tests[m] = BlockTest.from_samples(
                pair_matrix(estimate[start : start + count], n_layers),
                pair_matrix(samples[:, start : start + count], n_layers),
                level=config.confidence,
            )
        start += count
    rows = []
    for k, layer in enumerate(shared):
        low, high = percentile_interval(samples[:, start + k], config.confidence)
        rows.append(
            {
                "model_a": models[0],
                "model_b": models[1],
                "layer": layer,
                "measure": BOOT_MEASURE,
                "split": config.split,
                "value": float(estimate[start + k]),
                "ci_low": low,
                "ci_high": high,
                "n_boot": config.n_boot,
            }
        )
    return tests, rows


def run(ctx: RunContext) -> list[Table]:
    """Layer-by-layer similarity matrices for each model and between the two, with detected blocks."""
    from tunescope.similarity import cka_matrix

    split = ctx.config.split
    models = ctx.model_names()
    pairs = [(m, m) for m in models] + ([(models[0], models[1])] if len(models) == 2 else [])
    reps = {m: ctx.representations(m) for m in models}
    cka_rows: list[dict[str, Any]] = []
    block_rows: list[dict[str, Any]] = []
    opts: SimilarityOptions = ctx.config.options_for("similarity")
    tests, change_rows = _bootstrap(ctx, reps)
    for spec in opts.measures:
        measure, debiased = parse_measure(spec)
        for a, b in pairs:
            matrix = cka_matrix(reps[a], None if a == b else reps[b], measure=measure, debiased=debiased)
            cka_rows += _pair_rows(reps, a, b, matrix, measure=spec, split=split)
            if a == b and measure in BLOCK_MEASURES and len(reps[a].layers) > 1:
                test = tests.get(a) if spec == BOOT_MEASURE else None
                block_rows += _block_rows(reps[a], a, spec, matrix, test)
    tables = [
        Table("cka", CKA_COLUMNS, cka_rows),
        Table("blocks", BLOCK_COLUMNS, block_rows),
        Table("layer_change", CHANGE_COLUMNS, change_rows),
    ]
    if opts.rsa is not None:
        rdm, compare = opts.rsa
        rsa_rows: list[dict[str, Any]] = []
        for a, b in pairs:
            matrix = cka_matrix(reps[a], None if a == b else reps[b], measure="rsa", rdm=rdm, compare=compare)
            rsa_rows += _pair_rows(reps, a, b, matrix, rdm=rdm, compare=compare, split=split)
        tables.append(Table("rsa", RSA_COLUMNS, rsa_rows))
    return tables


def min_examples(config: AnalyzeConfig) -> int:
    """The fewest examples every configured measure (and RSA, which needs 3) is defined for."""
    from tunescope.similarity import MEASURES

    opts: SimilarityOptions = config.options_for("similarity")
    need = [3] if opts.rsa is not None else [2]
    for spec in opts.measures:
        name, debiased = parse_measure(spec)
        need += [MEASURES[name].min_examples, 4 if debiased else 2]
    return max(need)


STAGE = Stage(
    pooled=True,
    options=SimilarityOptions,
    min_examples=min_examples,
    name="similarity",
    title="Layer similarity (CKA and RSA)",
    run=run,
    description=(
        "Similarity between every pair of layers, inside each model and between the two models: linear "
        "CKA (Kornblith et al. 2019) and RSA (Kriegeskorte et al. 2008), with contiguous blocks of "
        "similar layers."
    ),
    after=("layers",),
)
