"""Several fine-tuning seeds: seeded stages run per seed, tables carry the seed, spreads are summarised."""

from __future__ import annotations

import math

import pytest

from tunescope._io import read_csv
from tunescope.errors import InputError
from tunescope.pipeline import AnalyzeConfig, Table, analyze
from tunescope.seeds import SEED_COLUMNS, combine
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_model(tiny_model("bert", num_layers=3), tmp_path_factory.mktemp("tiny-bert"))


def test_combine_puts_the_seed_first_and_summarises_keyed_rows():
    def tables(seed, value):
        return [
            Table("t", ("k", "value", "delta"), [{"k": "a", "value": value, "delta": value - 1}], key=("k",)),
            Table("plain", ("x",), [{"x": seed}]),
        ]

    merged = combine([(0, tables(0, 0.80)), (1, tables(1, 0.84)), (2, tables(2, 0.82))], level=0.9)
    by = {t.name: t for t in merged}
    assert set(by) == {"t", "plain", "t_seeds"}
    assert by["t"].columns[0] == "seed" and [r["seed"] for r in by["t"].rows] == [0, 1, 2]
    assert by["t_seeds"].columns == ("k", *SEED_COLUMNS)
    value = next(r for r in by["t_seeds"].rows if r["column"] == "value")
    from scipy import stats

    lo, hi = stats.t.interval(0.9, 2, loc=0.82, scale=stats.sem([0.80, 0.84, 0.82]))
    assert value["mean"] == pytest.approx(0.82) and value["n_seeds"] == 3 and value["seeds"] == "0,1,2"
    assert (value["ci_low"], value["ci_high"]) == pytest.approx((lo, hi))
    single = combine([(5, tables(5, 0.8))])
    assert [t.name for t in single] == ["t", "plain"]  # one seed: no spread to summarise


def test_too_many_seeds_is_refused_with_what_they_would_cost(tmp_path):
    with pytest.raises(InputError, match="11 seeds.*66 here.*at most 10"):
        AnalyzeConfig(out=tmp_path / "run", seeds=tuple(range(11)))
    with pytest.raises(InputError, match="distinct"):
        AnalyzeConfig(out=tmp_path / "run", seeds=(1, 1))


def test_the_first_seed_is_the_run_seed():
    assert AnalyzeConfig(seeds=(3, 4)).seed == 3 and AnalyzeConfig(seeds=(3, 4)).fit_seeds == (3, 4)
    assert AnalyzeConfig(seed=7).fit_seeds == (7,)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tiny_folder):
    def run(name):
        config = AnalyzeConfig(
            out=tmp_path_factory.mktemp(name) / "run",
            model=tiny_folder,
            limit=40,
            train_limit=40,
            batch_size=8,
            max_length=32,
            device="cpu",
            seeds=(0, 1),
            epochs=1,
            patience=None,
            n_boot=200,
            stages=("finetune", "truncation"),
        )
        return analyze(config, progress=False)

    return run("a"), run("b")


def test_seeded_stages_run_once_per_seed_with_their_own_models(two_seeds):
    root, _ = two_seeds
    assert (root / "models" / "tuned").is_dir() and (root / "models" / "tuned-seed1").is_dir()
    rows = read_csv(root / "results" / "truncation.csv")
    assert {r["seed"] for r in rows} == {"0", "1"}
    losses = {r["seed"]: r["train_loss"] for r in read_csv(root / "results" / "finetune.csv")}
    assert losses["0"] != losses["1"]  # another seed trains another model (head, dropout, order)
    spread = read_csv(root / "results" / "truncation_seeds.csv")
    full = next(
        r
        for r in spread
        if r["column"] == "value" and r["layers_kept"] == max(r["layers_kept"] for r in spread)
    )
    values = [float(r["value"]) for r in rows if r["layers_kept"] == full["layers_kept"]]
    assert float(full["mean"]) == pytest.approx(sum(values) / 2) and full["n_seeds"] == "2"
    assert not math.isnan(float(full["std"]))
    html = (root / "report.html").read_text()
    assert "across 2 seeds" in html


def test_repeating_the_seeds_repeats_the_results(two_seeds):
    a, b = two_seeds
    for table in ("finetune", "truncation", "truncation_seeds"):
        rows_a, rows_b = read_csv(a / "results" / f"{table}.csv"), read_csv(b / "results" / f"{table}.csv")
        drop = {"train_seconds", "seconds_per_batch"}
        strip = [[{k: v for k, v in r.items() if k not in drop} for r in rows] for rows in (rows_a, rows_b)]
        if table == "truncation_seeds":
            strip = [[r for r in rows if "seconds" not in r.get("column", "")] for rows in strip]
        assert strip[0] == strip[1], table
