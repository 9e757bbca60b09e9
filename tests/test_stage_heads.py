"""The ``heads`` stage: its tables equal the lens functions called directly, the summary follows the
curve, physical pruning computes what masking computed, and the report states those rows."""

from __future__ import annotations

import pytest
import torch

from tunescope._io import read_csv
from tunescope.errors import InputError
from tunescope.heads import fit_mlm_head, head_importance_batches, least_important
from tunescope.models import load_classifier, load_encoder
from tunescope.pipeline import AnalyzeConfig, analyze, read_manifest
from tunescope.stages.heads import COLUMNS, MAP_BATCH, SUMMARY_COLUMNS, TRANSFER_COLUMNS
from tunescope.surgery import count_parameters, prune_heads
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

LIMIT = 40


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-heads")
    encoder = tiny_model("bert", num_layers=3)
    return save_model(encoder, folder)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_folder):
    out = tmp_path_factory.mktemp("heads-run") / "run"
    config = AnalyzeConfig(
        out=out,
        model=tiny_folder,
        limit=LIMIT,
        train_limit=64,
        batch_size=16,
        device="cpu",
        stages=("finetune", "heads"),
        options={"heads": {"step": 0.25, "random_seeds": 2}},
    )
    return analyze(config, progress=False), config


def _examples(config):
    from tunescope.data import get_task

    return get_task(config.task).load(config.split, limit=config.limit)


def test_maps_equal_head_importance_on_the_same_models(run, tiny_folder):
    root, config = run
    rows = read_csv(root / "results" / "heads.csv")
    assert tuple(rows[0]) == ("seed", *COLUMNS)
    examples = _examples(config)
    models = {
        "base": load_encoder(tiny_folder, device="cpu"),
        "tuned": load_classifier(str(root / "models" / "tuned"), device="cpu"),
    }
    expected_maps = {("base", "mlm"), ("base", "kl"), ("tuned", "task"), ("tuned", "mlm"), ("tuned", "kl")}
    # the tiny checkpoint has no MLM head: one is fitted on the pre-trained encoder and reads both models
    fitted = fit_mlm_head(
        models["base"], examples, max_length=config.max_length, seed=config.seed, progress=False
    )
    seen = set()
    for model, objective in sorted(expected_maps):
        found = head_importance_batches(
            models[model],
            examples,
            objective,
            batch_size=MAP_BATCH,
            max_length=config.max_length,
            progress=False,
            seed=config.seed,
            mlm_head=fitted if objective == "mlm" else None,
        )
        mine = [r for r in rows if r["model"] == model and r["objective"] == found.label]
        assert len(mine) == 3 * 4, (model, objective)
        for r in mine:
            layer, head = int(r["layer"]), int(r["head"])
            assert r["location"] == f"layer.{layer}.head.{head}"
            assert float(r["importance"]) == pytest.approx(
                float(found.raw[layer - 1, head]), rel=1e-6, abs=1e-12
            )
            assert float(r["normalized"]) == pytest.approx(float(found.scores[layer - 1, head]), rel=1e-6)
        seen.add((model, found.label))
    assert {(r["model"], r["objective"]) for r in rows} == seen
    assert ("base", "mlm (fitted head)") in seen  # the tiny checkpoint has no MLM head: one is fitted


def test_the_summary_follows_the_curves(run):
    root, config = run
    curves = read_csv(root / "results" / "pruning.csv")
    summary = read_csv(root / "results" / "head_pruning_summary.csv")
    assert tuple(summary[0]) == ("seed", *SUMMARY_COLUMNS)
    assert [r["rank_by"] for r in summary] == ["task", "mlm", "random"]
    for row in summary:
        mine = [r for r in curves if r["rank_by"] == row["rank_by"]]
        seeds = {r["rank_seed"] for r in mine}
        assert int(row["rank_seeds"]) == len(seeds) == (2 if row["rank_by"] == "random" else 1)
        steps = sorted({int(r["heads_pruned"]) for r in mine})
        assert steps[0] == 0 and steps == sorted(steps) and steps[-1] <= 12 - 3  # one head kept per layer
        mean = {
            n: sum(float(r["value"]) for r in mine if int(r["heads_pruned"]) == n) / len(seeds) for n in steps
        }
        within = [n for n in steps if mean[n] >= mean[0] - float(row["max_loss"]) / 100 - 1e-12]
        assert int(row["heads_prunable"]) == max(within)
        assert float(row["value_at"]) == pytest.approx(mean[max(within)])
        assert float(row["mean_value"]) == pytest.approx(sum(mean.values()) / len(mean))
        first = [r for r in mine if r["rank_seed"] == min(seeds, key=int)]
        at = {int(r["heads_pruned"]): r for r in first}[int(row["heads_prunable"])]
        assert float(row["delta"]) == pytest.approx(float(at["delta"]))  # the curve's own paired change
        assert (float(row["delta_ci_low"]), float(row["delta_ci_high"])) == pytest.approx(
            (float(at["delta_ci_low"]), float(at["delta_ci_high"]))
        )
    task = summary[0]
    assert (float(task["vs_task"]), float(task["vs_task_ci_low"]), float(task["vs_task_ci_high"])) == (
        0,
        0,
        0,
    )
    for row in curves:  # every step's interval holds its value; the unpruned step differs by exactly 0
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
        if row["heads_pruned"] == "0":
            assert (float(row["delta_ci_low"]), float(row["delta_ci_high"])) == (0.0, 0.0)


def test_physical_pruning_computes_what_masking_computed(run):
    root, config = run
    (speed,) = read_csv(root / "results" / "head_speed.csv")
    curves = read_csv(root / "results" / "pruning.csv")
    (step,) = [r for r in curves if r["rank_by"] == "task" and r["heads_pruned"] == speed["heads_pruned"]]
    tuned = load_classifier(str(root / "models" / "tuned"), device="cpu")
    pruned = prune_heads(tuned, step["pruned"].split(";"))
    assert int(speed["params"]) == count_parameters(tuned)
    assert int(speed["params_pruned"]) == count_parameters(pruned) < count_parameters(tuned)
    # the curve evaluated the masked model on the heads' examples; the pruned model scores the same
    assert float(speed["value_pruned"]) == pytest.approx(float(step["value"]))
    assert float(speed["delta"]) == pytest.approx(float(speed["value_pruned"]) - float(speed["value"]))
    assert float(speed["delta_ci_low"]) <= float(speed["delta"]) <= float(speed["delta_ci_high"])


def test_prune_then_tune_against_tune_then_prune(run):
    root, config = run
    rows = read_csv(root / "results" / "head_transfer.csv")
    assert tuple(rows[0]) == ("seed", *TRANSFER_COLUMNS)
    by = {r["order"]: r for r in rows}
    assert set(by) == {"full", "prune_then_tune", "tune_then_prune"}
    first = load_classifier(str(root / "models" / "heads-pruned-then-tuned"), device="cpu")
    assert int(by["prune_then_tune"]["params"]) == count_parameters(first) < int(by["full"]["params"])
    assert (
        int(by["prune_then_tune"]["heads_pruned"])
        == int(by["tune_then_prune"]["heads_pruned"])
        == round(0.3 * 12)
    )
    # the heads pruned before fine-tuning are the pre-trained model's least important by MLM importance
    maps = read_csv(root / "results" / "heads.csv")
    base_mlm = torch.zeros(3, 4, dtype=torch.float64)
    for r in maps:
        if r["model"] == "base" and r["objective"].startswith("mlm"):
            base_mlm[int(r["layer"]) - 1, int(r["head"])] = float(r["normalized"])
    from tunescope.models import pruned_heads

    assert pruned_heads(first) == least_important(base_mlm, 0.3)


def test_the_report_states_the_rows(run):
    root, _ = run
    html = (root / "report.html").read_text()
    (task,) = [r for r in read_csv(root / "results" / "head_pruning_summary.csv") if r["rank_by"] == "task"]
    assert "Attention heads" in html
    assert f"{task['heads_prunable']} heads" in html
    assert (root / "figures" / "pruning.png").exists()
    manifest = read_manifest(root)
    assert manifest["stages"]["heads"]["status"] == "done"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"step": 1.5}, "--heads.step must be in"),
        ({"transfer_fraction": 1.0}, "--heads.transfer-fraction"),
        ({"limit": -1}, "--heads.limit"),
        ({"rescore": "maybe"}, "true or false"),
    ],
)
def test_bad_options_fail_at_the_config(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        AnalyzeConfig(out=tmp_path / "run", options={"heads": options})
    assert not (tmp_path / "run").exists()


def test_albert_is_masked_per_position_and_not_pruned_physically(tmp_path):
    folder = save_model(tiny_model("albert", num_layers=2), tmp_path / "albert")
    config = AnalyzeConfig(
        out=tmp_path / "run",
        model=folder,
        limit=24,
        train_limit=32,
        batch_size=16,
        device="cpu",
        stages=("finetune", "heads"),
        options={"heads": {"step": 0.5, "random_seeds": 1, "mlm_steps": 20}},
    )
    root = analyze(config, progress=False, report=False)
    curves = read_csv(root / "results" / "pruning.csv")
    assert {r["rank_by"] for r in curves} == {"task", "mlm", "random"}
    assert not (root / "results" / "head_speed.csv").exists()
    assert any("albert runs one shared layer" in note for note in read_manifest(root)["notes"])
