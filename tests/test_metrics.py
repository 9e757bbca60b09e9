"""Metrics against sklearn/scipy and hand-worked cases; ``evaluate`` against a direct forward pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from tunescope.data import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.errors import DataError, InputError, MeasureError, UnknownNameError
from tunescope.inference import evaluate
from tunescope.metrics import METRICS, compute_metric
from tunescope.models import from_model
from tunescope.testing.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.models

TEXTS = ["a good film", "the story was boring", "i loved it", "not bad at all", "awful", "fine music"]
PAIRS = ["it was great", "bad", "so so", "i liked it", "awful", "moving"]


# --- metrics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    for n_classes in (2, 4):
        pred, gold = rng.integers(0, n_classes, 50), rng.integers(0, n_classes, 50)
        average = "binary" if n_classes == 2 else "macro"
        assert compute_metric("accuracy", pred, gold) == pytest.approx(skm.accuracy_score(gold, pred))
        assert compute_metric("f1", pred, gold) == pytest.approx(skm.f1_score(gold, pred, average=average))
        assert compute_metric("mcc", pred, gold) == pytest.approx(skm.matthews_corrcoef(gold, pred))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    gold = rng.normal(size=40)
    pred = gold + rng.normal(size=40)
    p, s = stats.pearsonr(pred, gold)[0], stats.spearmanr(pred, gold)[0]
    assert compute_metric("pearson", pred, gold) == pytest.approx(p, abs=1e-12)
    assert compute_metric("spearman", pred, gold) == pytest.approx(s, abs=1e-12)
    assert compute_metric("pearson_spearman", pred, gold) == pytest.approx((p + s) / 2, abs=1e-12)


def test_hand_worked_cases():
    # preds 1 1 0 0 vs gold 1 0 0 0: tp=1 fp=1 tn=2 fn=0
    pred, gold = [1, 1, 0, 0], [1, 0, 0, 0]
    assert compute_metric("accuracy", pred, gold) == 0.75
    assert compute_metric("f1", pred, gold) == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # P = 1/2, R = 1
    assert compute_metric("mcc", pred, gold) == pytest.approx(2 / math.sqrt(2 * 1 * 3 * 2))
    # x = 1 2 3, y = 2 4 7: cov = 5/3 * ... -> r = 5 / sqrt(2 * 38/3)
    x, y = [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]
    assert compute_metric("pearson", x, y) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert compute_metric("spearman", x, y) == 1.0
    # scores are reduced with argmax for the class metrics
    assert compute_metric("accuracy", [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], [0, 1, 0]) == pytest.approx(2 / 3)


def test_registry_and_errors():
    assert set(METRICS) == {"accuracy", "f1", "mcc", "pearson", "spearman", "pearson_spearman"}
    with pytest.raises(UnknownNameError, match="accuracy, f1, mcc, pearson, pearson_spearman, spearman"):
        compute_metric("auc", [0], [0])
    with pytest.raises(MeasureError, match="3 predictions for 2 labels"):
        compute_metric("accuracy", [0, 1, 1], [0, 1])
    with pytest.raises(MeasureError, match="NaN"):
        compute_metric("pearson", [0.0, np.nan], [0.0, 1.0])
    with pytest.raises(MeasureError, match="no predictions"):
        compute_metric("accuracy", [], [])
    assert math.isnan(compute_metric("pearson", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))


# --- evaluate -----------------------------------------------------------------------------------
def _examples(labels, pairs=None, names=("neg", "pos")):
    return Examples(TEXTS, pairs, np.asarray(labels), "demo", "validation", names)


def _logits(encoder, texts, pairs=None):
    batch = encoder.tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        return encoder.model(**batch).logits


@pytest.mark.parametrize("pairs", [None, PAIRS])
def test_evaluate_classifier_matches_direct_forward(pairs):
    encoder = tiny_model("bert", task="classifier", num_labels=3, seed=3)
    labels = np.array([0, 1, 2, 2, 1, 0])
    ex = _examples(labels, pairs, ("a", "b", "c"))
    got = evaluate(encoder, ex, metric=["accuracy", "mcc"], batch_size=4)
    pred = _logits(encoder, TEXTS, pairs).argmax(-1).numpy()
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(labels, pred))
    assert got["n"] == 6


def test_evaluate_regression_uses_first_logit():
    encoder = tiny_model("roberta", task="classifier", num_labels=1)
    encoder.model.config.problem_type = "regression"
    target = np.array([0.1, 0.5, 0.9, 0.3, 0.0, 0.7])
    got = evaluate(encoder, Examples(TEXTS, None, target, "sts", "validation", None), batch_size=6)
    pred = _logits(encoder, TEXTS)[:, 0].double().numpy()
    assert got["pearson"] == pytest.approx(stats.pearsonr(pred, target)[0], abs=1e-4)
    assert got["spearman"] == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-4)
    assert set(got) == {"pearson", "spearman", "pearson_spearman", "n"}


def test_evaluate_tokens_scores_first_sub_token_of_each_word():
    import transformers

    tokenizer = tiny_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=3,
    )
    torch.manual_seed(0)
    encoder = from_model(transformers.BertForTokenClassification(config).eval(), tokenizer)
    words = [["a", "zzq", "film"], ["qqx", "good"]]  # zzq, qqx split into several sub-tokens
    tags = [[0, 1, 2], [2, 1]]
    ex = TokenExamples(words, tags, ("x", "y", "z"), "tags", "validation")
    got = evaluate(encoder, ex, batch_size=1)
    enc = tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = encoder.model(**enc).logits
    pred, gold = [], []
    for i in range(2):
        seen = set()
        for pos, word in enumerate(enc.word_ids(i)):
            if word is not None and word not in seen:
                seen.add(word)
                pred.append(int(logits[i, pos].argmax()))
                gold.append(tags[i][word])
    assert got["n"] == 5
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred))


def test_evaluate_refuses_models_that_cannot_score():
    ex = _examples([0, 1, 0, 1, 0, 1])
    with pytest.raises(InputError, match="needs a classifier head; load it with load_classifier"):
        evaluate(tiny_model("bert"), ex)
    with pytest.raises(InputError, match="3-way classifier head but the task has 2 labels"):
        evaluate(tiny_model("bert", task="classifier", num_labels=3), ex)
    with pytest.raises(InputError, match="regression"):
        evaluate(
            tiny_model("bert", task="classifier"), Examples(TEXTS, None, np.linspace(0, 1, 6), "s", "v", None)
        )
    unlabelled = Examples(TEXTS, None, None, "demo", "test", ("neg", "pos"))
    with pytest.raises(DataError, match="no labels"):
        evaluate(tiny_model("bert", task="classifier"), unlabelled)
    with pytest.raises(UnknownNameError, match="metric"):
        evaluate(tiny_model("bert", task="classifier"), ex, metric="auc")
