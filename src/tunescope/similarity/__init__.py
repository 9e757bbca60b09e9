"""Similarity between representations: CKA (linear, RBF, debiased, streaming, minibatch), RSA, SVCCA,
PWCCA, Procrustes, all-pairs layer matrices and block detection.

Every measure is a pure function of (n_examples, d) tensors that returns a 0-dim float64 tensor on the
inputs' device; `cka_matrix` computes every layer pair at once; the accumulators (`StreamingCKA`,
`MinibatchCKA`) share the same private pieces. Bad input raises one `tunescope.errors.MeasureError`.
"""

from __future__ import annotations

from tunescope.similarity.blocks import (
    MARGIN_THRESHOLD,
    Blocks,
    BlockTest,
    block_margin,
    block_test,
    find_blocks,
)
from tunescope.similarity.bootstrap import (
    BootstrapCI,
    bootstrap_ci,
    bootstrap_linear_cka,
    percentile_interval,
)
from tunescope.similarity.cca import pwcca, svcca
from tunescope.similarity.cka import linear_cka, rbf_cka
from tunescope.similarity.kernels import center_gram, hsic, linear_gram, rbf_gram, u_center_gram
from tunescope.similarity.matrix import MEASURES, Measure, cka_matrix
from tunescope.similarity.minibatch import MinibatchCKA, minibatch_cka
from tunescope.similarity.procrustes import procrustes
from tunescope.similarity.rsa import COMPARISONS, RDM_METHODS, rdm, rsa
from tunescope.similarity.streaming import StreamingCKA

__all__ = [
    "linear_cka",
    "rbf_cka",
    "StreamingCKA",
    "MinibatchCKA",
    "minibatch_cka",
    "rsa",
    "rdm",
    "RDM_METHODS",
    "COMPARISONS",
    "svcca",
    "pwcca",
    "procrustes",
    "cka_matrix",
    "MEASURES",
    "Measure",
    "find_blocks",
    "Blocks",
    "block_margin",
    "block_test",
    "BlockTest",
    "MARGIN_THRESHOLD",
    "bootstrap_ci",
    "bootstrap_linear_cka",
    "percentile_interval",
    "BootstrapCI",
    "hsic",
    "linear_gram",
    "rbf_gram",
    "center_gram",
    "u_center_gram",
]
