"""How a run fine-tunes: the experiments' training examples and their full arm (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunescope.pipeline import AnalyzeConfig
from tunescope.runmodels import RunTraining


def _training(**fields):
    return RunTraining(AnalyzeConfig(**fields), Path("/nonexistent"), torch.device("cpu"), progress=False)


@pytest.mark.parametrize(
    ("train_limit", "experiment", "expected"),
    [(None, 2000, 2000), (1000, 2000, 1000), (5000, None, 5000), (None, None, None), (3000, 500, 500)],
)
def test_the_experiments_train_on_at_most_the_runs_examples(train_limit, experiment, expected):
    training = _training(train_limit=train_limit, experiment_train_limit=experiment)
    assert training.experiment_limit() == expected


@pytest.mark.parametrize(
    ("fields", "name", "experiment"),
    [
        ({"train_limit": 2000, "experiment_train_limit": 2000}, "tuned", False),  # same examples: reused
        ({"train_limit": None, "experiment_train_limit": 2000}, "full", True),  # fewer: its own full arm
        ({"train_limit": 2000, "experiment_train_limit": 2000, "tuned": "my-model"}, "full", True),
    ],
)
def test_the_full_arm_is_the_runs_model_only_when_trained_alike(monkeypatch, fields, name, experiment):
    training = _training(**fields)
    calls = []
    monkeypatch.setattr(training, "train", lambda n, experiment=False: calls.append((n, experiment)))
    training.experiment_full()
    assert calls == [(name, experiment)]
