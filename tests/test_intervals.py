"""Bootstrap intervals over examples and summaries over seeds (tunescope.intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tunescope.errors import InputError, MeasureError
from tunescope.intervals import (
    _confusions,
    _draws,
    _from_confusion,
    difference_interval,
    mean_interval,
    metric_interval,
    seed_summary,
)

SKLEARN = {
    "accuracy": accuracy_score,
    "f1": lambda g, p: f1_score(
        g, p, average="binary" if set(g) | set(p) <= {0, 1} else "macro", zero_division=0
    ),
    "mcc": matthews_corrcoef,
}


@pytest.mark.parametrize("name", ["accuracy", "f1", "mcc"])
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_form_equals_sklearn_on_every_resample(name, n_classes, seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, n_classes, 60)
    pred = np.where(rng.random(60) < 0.7, gold, rng.integers(0, n_classes, 60))
    draws = _draws(60, 25, seed)
    counts, classes = _confusions(pred, gold, None, 60, draws)
    grouped, _ = _confusions(pred, gold, np.arange(60), 60, draws)
    np.testing.assert_array_equal(counts, grouped)
    fast = _from_confusion(name, counts, classes)
    slow = [SKLEARN[name](gold[d], pred[d]) for d in draws]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_grouped_resample_counts_whole_groups():
    # three sentences of 1, 2 and 3 words; a resample drawing sentence 2 twice counts 6 words
    groups = np.array([0, 1, 1, 2, 2, 2])
    gold = np.array([1, 1, 0, 0, 0, 0])
    pred = np.array([1, 0, 0, 0, 1, 0])
    draws = np.array([[2, 2, 0], [1, 1, 1]])
    counts, _ = _confusions(pred, gold, groups, 3, draws)
    assert counts[0].sum() == 7 and counts[1].sum() == 6
    assert _from_confusion("accuracy", counts, np.array([0, 1]))[1] == pytest.approx(0.5)


def _coverage(draw, truth, n_sim=300, **kwargs):
    hits = 0
    for sim in range(n_sim):
        ci = draw(np.random.default_rng(1000 + sim), sim)
        hits += ci.low <= truth <= ci.high
    return hits / n_sim


def test_accuracy_interval_covers_the_true_accuracy_at_about_the_nominal_rate():
    p_correct = 0.8

    def draw(rng, sim):
        gold = rng.integers(0, 2, 400)
        pred = np.where(rng.random(400) < p_correct, gold, 1 - gold)
        return metric_interval("accuracy", pred, gold, n_boot=400, seed=sim)

    assert 0.91 <= _coverage(draw, p_correct) <= 0.98


def test_paired_difference_covers_the_true_difference_and_is_narrower_than_unpaired():
    # model b is right wherever a is, plus on 5% more examples: true difference 0.05
    widths = []

    def draw(rng, sim):
        gold = rng.integers(0, 2, 500)
        u = rng.random(500)
        a = np.where(u < 0.75, gold, 1 - gold)
        b = np.where(u < 0.80, gold, 1 - gold)
        ci = difference_interval("accuracy", a, b, gold, n_boot=400, seed=sim)
        lone_a = metric_interval("accuracy", a, gold, n_boot=400, seed=sim)
        widths.append((ci.high - ci.low, 2 * (lone_a.high - lone_a.low)))
        return ci

    assert 0.91 <= _coverage(draw, 0.05) <= 0.99
    paired, unpaired = np.mean(widths, axis=0)
    assert paired < unpaired / 2


def test_mean_interval_covers_a_normal_mean():
    def draw(rng, sim):
        return mean_interval(rng.normal(1.5, 2.0, 200), n_boot=400, seed=sim)

    assert 0.91 <= _coverage(draw, 1.5) <= 0.98


def test_identical_predictions_give_a_zero_difference_exactly():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 300)
    pred = rng.integers(0, 3, 300)
    for name in ("accuracy", "f1", "mcc"):
        ci = difference_interval(name, pred, pred, gold, n_boot=200)
        assert (ci.value, ci.low, ci.high) == (0.0, 0.0, 0.0)
        assert not ci.excludes(0.0)
    values = rng.normal(size=300)
    ci = difference_interval("pearson", values, values, values + rng.normal(size=300), n_boot=100)
    assert (ci.low, ci.high) == (0.0, 0.0)


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, gold, 1 - gold)
    a = metric_interval("f1", pred, gold, n_boot=200, seed=5)
    b = metric_interval("f1", pred, gold, n_boot=200, seed=5)
    c = metric_interval("f1", pred, gold, n_boot=200, seed=6)
    assert a == b and (a.low, a.high) != (c.low, c.high)


def test_value_is_the_metric_on_all_examples_and_inside_the_interval():
    rng = np.random.default_rng(4)
    y = rng.normal(size=150)
    p = y + rng.normal(scale=0.5, size=150)
    ci = metric_interval("pearson_spearman", p, y, n_boot=150)
    from tunescope.metrics import pearson_spearman

    assert ci.value == pearson_spearman(p, y)
    assert ci.low <= ci.value <= ci.high


def test_grouped_interval_is_wider_when_words_of_a_sentence_agree():
    # each sentence is all right or all wrong: 50 sentences, 20 words each; per-word resampling
    # would pretend there are 1,000 independent words
    rng = np.random.default_rng(5)
    right = rng.random(50) < 0.7
    gold = np.ones(1000, dtype=int)
    pred = np.repeat(np.where(right, 1, 0), 20)
    groups = np.repeat(np.arange(50), 20)
    words = metric_interval("accuracy", pred, gold, n_boot=300)
    sentences = metric_interval("accuracy", pred, gold, groups=groups, n_boot=300)
    assert sentences.value == words.value
    assert (sentences.high - sentences.low) > 3 * (words.high - words.low)


def test_seed_summary_is_the_t_interval():
    from scipy import stats

    values = [0.81, 0.84, 0.80, 0.86]
    s = seed_summary(values, level=0.9)
    lo, hi = stats.t.interval(0.9, 3, loc=np.mean(values), scale=stats.sem(values))
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert (s.low, s.high) == pytest.approx((lo, hi))
    one = seed_summary([0.8])
    assert one.mean == 0.8 and math.isnan(one.low) and one.n == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"n_boot": 99}, {"n_boot": 1.5}, {"n_boot": True}, {"level": 0.0}, {"level": 1.0}, {"level": 95}],
)
def test_bad_options_are_refused(kwargs):
    with pytest.raises(InputError):
        metric_interval("accuracy", [0, 1], [0, 1], **kwargs)


def test_bad_inputs_are_refused():
    with pytest.raises(MeasureError, match="predictions for"):
        metric_interval("accuracy", [0, 1, 1], [0, 1])
    with pytest.raises(MeasureError, match="group ids"):
        metric_interval("accuracy", [0, 1], [0, 1], groups=[0])
    with pytest.raises(MeasureError, match="at least one"):
        metric_interval("accuracy", [], [])
