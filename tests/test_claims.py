"""Report sentences follow the run's numbers: wording changes when an interval crosses 0 (planted rows)."""

from __future__ import annotations

import pytest

from tunescope.report.claims import Difference, verdict
from tunescope.stages.ablation.section import _sentence, merchant_verdict
from tunescope.stages.truncation.section import phang_verdict, recommendation_sentence


@pytest.mark.parametrize(
    ("value", "low", "high", "words"),
    [
        (-0.02, -0.03, -0.01, "costs 2.0 points [-3.0, -1.0]"),
        (0.02, 0.01, 0.03, "gains 2.0 points [1.0, 3.0]"),
        (-0.02, -0.03, 0.01, "makes no measurable difference (-2.0 points [-3.0, 1.0])"),
        (-0.02, float("nan"), float("nan"), "makes no measurable difference (-2.0 points)"),
    ],
)
def test_a_difference_is_only_a_cost_or_a_gain_when_its_interval_excludes_zero(value, low, high, words):
    assert Difference(value, low, high).words() == words


def test_verdicts():
    assert [verdict(True), verdict(False), verdict(None)] == [
        "this run agrees",
        "this run disagrees",
        "this run cannot tell",
    ]


def _truncation(drop_one: tuple[float, float, float]) -> list[dict[str, object]]:
    value, low, high = drop_one
    return [
        {"layers_kept": 3, "value": 0.85, "delta": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0},
        {"layers_kept": 2, "value": 0.85 + value, "delta": value, "delta_ci_low": low, "delta_ci_high": high},
        {"layers_kept": 1, "value": 0.5, "delta": -0.35, "delta_ci_low": -0.38, "delta_ci_high": -0.32},
    ]


@pytest.mark.parametrize(
    ("drop_one", "says"),
    [
        ((-0.002, -0.008, 0.004), "this run agrees: dropping the top layer makes no measurable difference"),
        ((-0.061, -0.075, -0.047), "this run disagrees: dropping the top layer costs 6.1 points"),
        ((-0.01, -0.025, 0.004), "this run cannot tell: dropping the top layer makes no measurable"),
    ],
)
def test_the_phang_sentence_follows_the_interval_of_dropping_one_layer(drop_one, says):
    sentence = phang_verdict(_truncation(drop_one), max_loss=1.0)
    assert sentence is not None and says in sentence and "Phang et al. (2021)" in sentence


def test_the_recommendation_states_the_cost_with_its_interval():
    rows = _truncation((-0.061, -0.075, -0.047))
    chosen = [{"layers_kept": 3, "n_layers": 3, "max_loss": 1.0}]
    assert recommendation_sentence(chosen, rows, "accuracy") == (
        "Every layer counts here: dropping the top layer costs 6.1 points [-7.5, -4.7] of accuracy, "
        "more than the 1 point(s) allowed."
    )
    noisy = _truncation((-0.075, -0.17, 0.02))
    assert recommendation_sentence(chosen, noisy, "accuracy") == (
        "No cut is recommended: dropping the top layer changes accuracy by -7.5 points on these examples, "
        "more than the 1 point(s) allowed, but its interval [-17.0, 2.0] points cannot tell that from no "
        "change; more analysis examples (--limit) would."
    )
    cut = {**rows[1], "n_layers": 3, "full_value": 0.85, "max_loss": 1.0, "params": 80, "full_params": 100}
    cut.update(delta=-0.002, delta_ci_low=-0.008, delta_ci_high=0.004)
    assert recommendation_sentence([cut], rows, "accuracy").startswith(
        "Dropping the top 1 layer(s) makes no measurable difference (-0.2 points [-0.8, 0.4]) of accuracy"
    )


def _ablation(restore_3: tuple[float, float, float], restore_1: tuple[float, float, float]):
    def row(kind, layers, change):
        value, low, high = change
        return {
            "ablation": kind,
            "layers": layers,
            "metric": "accuracy",
            "value": 0.8 + value,
            "delta": value,
            "delta_ci_low": low,
            "delta_ci_high": high,
        }

    none = (0.0, 0.0, 0.0)
    return [
        row("none", "", none),
        row("restore", "1", restore_1),
        row("restore", "2", (0.001, -0.004, 0.006)),
        row("restore", "3", restore_3),
        row("restore_top", "3", restore_3),
    ]


def test_ablation_wording_changes_when_the_interval_crosses_zero():
    measurable = _sentence(_ablation((-0.019, -0.03, -0.008), (0.0, -0.002, 0.002)), "accuracy")
    noise = _sentence(_ablation((-0.019, -0.04, 0.002), (0.0, -0.002, 0.002)), "accuracy")
    assert "restoring it alone costs 1.9 points [-3.0, -0.8]" in measurable
    assert "Even resetting layer 3" in measurable
    assert "restoring any single layer alone makes no measurable difference" in noise
    assert noise.startswith("Resetting layer 3 to pre-trained weights makes no measurable difference")


def test_merchant_verdict_reads_where_the_measurable_losses_are():
    top = merchant_verdict(_ablation((-0.019, -0.03, -0.008), (0.0, -0.002, 0.002)), 3)
    bottom = merchant_verdict(_ablation((0.0, -0.002, 0.002), (-0.019, -0.03, -0.008)), 3)
    none = merchant_verdict(_ablation((0.0, -0.002, 0.002), (0.0, -0.002, 0.002)), 3)
    assert top is not None and "this run agrees: restoring layer(s) 3 alone costs measurably" in top
    assert bottom is not None and "this run disagrees: restoring layer(s) 1" in bottom
    assert none is not None and "this run cannot tell: restoring any single layer" in none
