"""Several sentence poolings in one run: pooled stages run per pooling and the report compares them."""

from __future__ import annotations

import pytest

from tunescope._io import read_csv
from tunescope.errors import InputError, UnknownNameError
from tunescope.pipeline import AnalyzeConfig, analyze
from tunescope.stages.similarity.section import pooling_sentences
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_model(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-bert"))


def test_bad_pooling_lists_are_refused():
    with pytest.raises(UnknownNameError, match="nope"):
        AnalyzeConfig(pooling="cls,nope")
    with pytest.raises(InputError, match="distinct"):
        AnalyzeConfig(pooling="cls,cls")
    assert AnalyzeConfig(pooling=" cls , mean").poolings == ("cls", "mean")


def test_pooled_stages_run_once_per_pooling(tmp_path, tiny_folder):
    config = AnalyzeConfig(
        out=tmp_path / "run",
        model=tiny_folder,
        limit=40,
        batch_size=16,
        device="cpu",
        finetune=False,
        pooling="cls,mean",
        n_boot=100,
        stages=("layers", "similarity"),
    )
    root = analyze(config, progress=False)
    cka = read_csv(root / "results" / "cka.csv")
    assert cka[0]["pooling"] == "cls" and {r["pooling"] for r in cka} == {"cls", "mean"}
    single = analyze(
        AnalyzeConfig(**{**config.__dict__, "out": tmp_path / "mean", "pooling": "mean"}), progress=False
    )
    # the mean rows of the two-pooling run are the rows of a run under mean alone
    alone = read_csv(single / "results" / "cka.csv")
    assert [r for r in cka if r["pooling"] == "mean"] == alone
    html = (root / "report.html").read_text()
    assert "pooling" in html


def _blocks(pooling, spans, significant="True"):
    return [
        {
            "model": "tuned",
            "measure": "linear_cka",
            "pooling": pooling,
            "first_layer": str(a),
            "last_layer": str(b),
            "significant": significant,
        }
        for a, b in spans
    ]


def test_the_report_says_where_the_poolings_disagree():
    differ = _blocks("mean", [(0, 3), (4, 6)]) + _blocks("cls", [(1, 4), (5, 6)])
    (sentence,) = pooling_sentences(differ)
    assert "under mean pooling 0-3 / 4-6; under cls pooling 1-4 / 5,6" in sentence
    same = _blocks("mean", [(0, 3), (4, 6)]) + _blocks("cls", [(0, 3), (4, 6)])
    assert pooling_sentences(same) == ["The mean and cls poolings find the same blocks in every model."]
    null = _blocks("mean", [(0, 3), (4, 6)]) + _blocks("cls", [(0, 3), (4, 6)], significant="False")
    assert "not beyond a smooth decay" in pooling_sentences(null)[0]
    assert pooling_sentences(_blocks("mean", [(0, 6)])) == []
