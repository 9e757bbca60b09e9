"""Stage ``ffn``: intervals of each arm's metric and of its paired difference from the full model, and the
section's wording of them (Sridhar & Sarah 2020). The table's other columns: tests/test_stage_surgery.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tunescope._io import read_csv
from tunescope.data import get_task
from tunescope.inference import evaluate, predictions
from tunescope.models import load_classifier
from tunescope.pipeline import AnalyzeConfig, analyze
from tunescope.report._section import Section
from tunescope.stages.ffn import COLUMNS
from tunescope.stages.ffn.section import build
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

LIMIT = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``ffn`` alone on a tiny 3-layer BERT (matrices redrawn at std 0.2, so the FFNs matter)."""
    encoder = tiny_model("bert", num_layers=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in encoder.model.named_parameters():
            if param.ndim == 2 and "embeddings" not in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    folder = save_model(encoder, tmp_path_factory.mktemp("tiny-bert-ffn"))
    config = AnalyzeConfig(
        out=tmp_path_factory.mktemp("run") / "run",
        model=folder,
        limit=LIMIT,
        train_limit=64,
        batch_size=16,
        device="cpu",
        stages=("ffn",),
        n_boot=400,
        confidence=0.9,
        seed=3,
    )
    return analyze(config, progress=False), config


def test_each_arm_has_its_interval_and_a_paired_difference_from_full(run):
    root, config = run
    full, removed = read_csv(root / "results" / "ffn.csv")
    assert tuple(full) == ("seed", *COLUMNS)
    examples = get_task("movie-sentiment").load("validation", limit=LIMIT)
    options = {"n_boot": 400, "level": 0.9, "seed": 3}
    found = {}
    for row, folder in ((full, "tuned"), (removed, "ffn-removed")):
        model = load_classifier(str(root / "models" / folder))
        found[row["model"]] = predictions(model, examples, batch_size=16)
        ci = found[row["model"]].interval("accuracy", **options)
        assert float(row["value"]) == pytest.approx(evaluate(model, examples, batch_size=16)["accuracy"])
        assert (float(row["value"]), float(row["ci_low"]), float(row["ci_high"])) == (
            ci.value,
            ci.low,
            ci.high,
        )
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
        assert int(row["n_boot"]) == 400
    # the full arm against itself: exactly nothing; the removed arm: paired over the same examples
    assert [float(full[c]) for c in ("delta", "delta_ci_low", "delta_ci_high")] == [0.0, 0.0, 0.0]
    diff = found["full"].difference(found["ffn_removed"], "accuracy", **options)
    assert float(removed["delta"]) == pytest.approx(float(removed["value"]) - float(full["value"]))
    assert (float(removed["delta_ci_low"]), float(removed["delta_ci_high"])) == (diff.low, diff.high)
    html = (root / "report.html").read_text()
    assert "Sridhar &amp; Sarah (2020) found" in html and "this run" in html
    assert "90% interval" in html


# --- the section, on planted tables ----------------------------------------------------------------


class _Planted(Section):
    def __init__(self, tables):
        super().__init__(Path("."), {"config": {"confidence": 0.95, "ffn.layers": None}})
        self.tables = tables

    def table(self, name):
        return self.tables.get(name, [])


def _planted(delta, low, high):
    cka = [
        {"layer": str(layer), "cka": str(c), "chosen": str(layer == 2)} for layer, c in ((1, 0.5), (2, 0.9))
    ]
    common = {"metric": "accuracy", "n_boot": "1000", "trainable_params": "100"}
    full = {
        "model": "full",
        "ffn_removed_layers": "",
        "value": "0.800",
        "params": "100",
        "train_seconds": "10",
    }
    full |= {
        "ci_low": "0.76",
        "ci_high": "0.84",
        "delta": "0.0",
        "delta_ci_low": "0.0",
        "delta_ci_high": "0.0",
    }
    removed = {"model": "ffn_removed", "ffn_removed_layers": "2", "value": str(0.8 + delta), "params": "90"}
    removed |= {"train_seconds": "8", "ci_low": "0.7", "ci_high": "0.9"}
    removed |= {"delta": str(delta), "delta_ci_low": str(low), "delta_ci_high": str(high)}
    return {"ffn_cka": cka, "ffn": [full | common, removed | common]}


@pytest.mark.parametrize(
    ("delta", "low", "high", "words"),
    [
        (
            -0.005,
            -0.012,
            0.004,
            ("makes no measurable difference (-0.5 points [-1.2, 0.4])", "this run agrees"),
        ),
        (-0.010, -0.018, -0.003, ("it costs 1.0 points [-1.8, -0.3]", "this run agrees")),
        (-0.010, -0.050, 0.030, ("makes no measurable difference (-1.0 points", "this run cannot tell")),
        (-0.080, -0.120, -0.040, ("it costs 8.0 points [-12.0, -4.0]", "this run disagrees")),
        (0.020, 0.005, 0.035, ("it gains 2.0 points [0.5, 3.5]", "this run agrees")),
    ],
)
def test_section_states_the_cost_with_its_interval_and_the_verdict(delta, low, high, words):
    section = build(_Planted(_planted(delta, low, high)))
    sentence = section["sentence"]
    assert sentence.startswith(
        "Removing the FFN of layer 2 (chosen where it changes the representation least"
    )
    assert "changes accuracy from 0.800 to" in sentence and "saves 10% of the parameters" in sentence
    assert "Sridhar & Sarah (2020) found that removing FFN sublayers" in sentence
    for text in words:
        assert text in sentence, sentence
    if words[1] == "this run cannot tell":
        assert "allows both a smaller and a larger loss" in sentence
    full, removed = section["rows"]
    assert full["change"] == "" and full["interval"] == "[0.760, 0.840]"
    assert removed["change"].startswith(f"{100 * delta:+.1f} [")


def test_section_wording_changes_when_the_interval_crosses_zero():
    measurable = build(_Planted(_planted(-0.01, -0.015, -0.001)))["sentence"]
    crossing = build(_Planted(_planted(-0.01, -0.015, 0.001)))["sentence"]
    assert "it costs 1.0 points [-1.5, -0.1]" in measurable and "no measurable" not in measurable
    assert "it makes no measurable difference (-1.0 points [-1.5, 0.1])" in crossing
    undefined = build(_Planted(_planted(-0.01, math.nan, math.nan)))["sentence"]
    assert "this run cannot tell" in undefined and "no interval for the change" in undefined
