"""What a run is and what it has done: its key, its progress, its record, and whether ``out`` holds it.

The key hashes everything that decides the result (config, labels, starting model, data), so a rerun of
the same call finds its own checkpoints and finished record, and an ``out`` of another run is refused.
``tunescope_finetune.json`` (:data:`RESULT_FILE`) is written last: while it is missing or damaged the
run is not finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from tunescope.data.examples import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.errors import InputError
from tunescope.finetune.checkpoints import _CHECKPOINTS, _epochs_on_disk, _json_record
from tunescope.finetune.config import FinetuneConfig, FinetuneResult
from tunescope.finetune.labels import _Labels
from tunescope.models.loading import _damaged_weights

logger = logging.getLogger("tunescope.finetune")  # one logger for the package, as before the split

RESULT_FILE = "tunescope_finetune.json"
_FORMAT = 1


def _run_key(
    config: FinetuneConfig,
    labels: _Labels,
    fingerprint: str,
    train: Examples | TokenExamples,
    validation: Any,
) -> str:
    options = dataclasses.asdict(config)
    if options["patience"] is None:  # options added later stay out of the key when unset,
        del options["patience"]  # so runs recorded before them keep their key and are reused
    if options["precision"] == "fp32":
        del options["precision"]
    payload = {
        "format": _FORMAT,
        "config": options,
        "kind": labels.kind,
        "regression": labels.regression,
        "labels": labels.names,
        "metrics": labels.metrics,
        "model": fingerprint,
        "train": train.content_hash,
        "validation": validation.content_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


@dataclass
class _Progress:
    """Where a run stands: the last epoch done, the history rows so far, the epoch kept (0: none yet)."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan

    def add(self, row: dict[str, Any], metric: str, *, selects: bool) -> None:
        """Record the next epoch's history row, and keep that epoch unless it loses the selection.

        With ``selects`` (``keep_best`` and per-epoch evaluation) an epoch is kept when its ``metric``
        beats the kept one's; without, the last epoch is the one kept.
        """
        if not selects or self.best_epoch == 0 or _better(row[metric], self.best_value):
            self.best_epoch, self.best_value = row["epoch"], row.get(metric, math.nan)
        self.history.append(row)
        self.epoch = row["epoch"]

    def since_best(self, metric: str) -> int:
        """Epochs done since ``metric`` last improved (strictly) on its best so far; all epochs if never.

        Counted from the history alone, so a run resumed from a checkpoint counts as the uninterrupted
        run did, whichever epoch ``keep_best`` keeps.
        """
        best, best_epoch = math.nan, 0
        for row in self.history:
            if _better(float(row.get(metric, math.nan)), best):
                best, best_epoch = float(row[metric]), int(row["epoch"])
        return self.epoch - best_epoch

    def stops(self, config: FinetuneConfig, metric: str) -> bool:
        """Whether the run ends here: all ``config.epochs`` done, or ``config.patience`` epochs stale."""
        if self.epoch >= config.epochs:
            return True
        return config.patience is not None and self.since_best(metric) >= config.patience

    def state(self, key: str) -> dict[str, Any]:
        """The ``state.json`` of the checkpoint of the last epoch done (run ``key``)."""
        return {
            "key": key,
            "epoch": self.epoch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
        }


def _record(
    key: str,
    labels: _Labels,
    config: FinetuneConfig,
    run: _Progress,
    *,
    trainable: int,
    total: int,
    examples: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The finished run's ``tunescope_finetune.json``: config, history, the kept epoch, counts, versions.

    ``examples``: the numbers of training and validation examples (``train_examples``,
    ``validation_examples``; what training throughput is measured against).
    """
    return {
        "format": _FORMAT,
        "key": key,
        "task": labels.task_name,
        "kind": labels.kind,
        "label_names": labels.names,
        "metric": labels.metrics[0],
        "best_epoch": run.best_epoch,
        "best_value": run.best_value,
        "history": run.history,
        "stopped_epoch": run.epoch,
        "stopped_early": run.epoch < config.epochs,
        "train_seconds": float(sum(h["seconds"] for h in run.history)),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_examples": examples[0],
        "validation_examples": examples[1],
        "config": dataclasses.asdict(config),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def _result_from_json(out: Path, record: dict[str, Any]) -> FinetuneResult:
    """The result ``record`` describes; one written before early stopping ran all its epochs."""
    history = record["history"]
    return FinetuneResult(
        path=out,
        history=history,
        best_epoch=int(record["best_epoch"]),
        metric=record["metric"],
        best_value=float(record["best_value"]),
        train_seconds=float(record["train_seconds"]),
        trainable_parameters=int(record["trainable_parameters"]),
        total_parameters=int(record["total_parameters"]),
        config=FinetuneConfig(**record["config"]),
        stopped_epoch=int(record.get("stopped_epoch", history[-1]["epoch"] if history else 0)),
        stopped_early=bool(record.get("stopped_early", False)),
    )


def _finished(out: Path, record: dict[str, Any]) -> FinetuneResult | None:
    """The result a readable record of this run describes, or ``None`` (with a warning) if damaged."""
    try:
        result = _result_from_json(out, record)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"entry {exc} is missing" if isinstance(exc, KeyError) else f"an entry is invalid: {exc}"
        problem = f"{out / RESULT_FILE} is damaged ({what})"
    else:
        damaged = _damaged_weights(out) if (out / "config.json").is_file() else None
        if damaged is None:
            return result
        problem = str(damaged).rsplit("; ", 1)[0]  # without its fix, which is to train again here
    logger.warning("%s; the run is not counted as finished and is trained again", problem)
    return None


def _checkpoint_owners(folder: Path) -> set[str]:
    """The run keys that the readable ``state.json`` files of ``folder``'s checkpoints name."""
    owners = set()
    for epoch in _epochs_on_disk(folder):
        state, _ = _json_record(folder / f"epoch-{epoch}" / "state.json")
        if state is not None and isinstance(state.get("key"), str):
            owners.add(state["key"])
    return owners


def _check_out(out: Path, key: str) -> FinetuneResult | None:
    """The finished run's result when ``out`` holds this run, finished; refuse an ``out`` of another run.

    Damaged records are handled as the :mod:`tunescope.finetune` docstring says: an unreadable
    ``tunescope_finetune.json`` makes the run unfinished; an unreadable ``checkpoints/run.json`` leaves
    the decision to the checkpoints' own ``state.json`` files.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; --out must be a folder (new, empty, or of this same run)")
    other = "choose another --out or delete it"
    result = out / RESULT_FILE
    if result.is_file():
        record, problem = _json_record(result)
        if record is None:
            logger.warning(
                "%s is damaged (%s); the run is not counted as finished and is trained again", result, problem
            )
        elif record.get("key") != key:
            raise InputError(
                f"{out} holds a fine-tuned model with other settings, data or starting model; {other}"
            )
        else:
            finished = _finished(out, record)
            if finished is not None:
                return finished
    folder = out / _CHECKPOINTS
    run = folder / "run.json"
    if run.is_file():
        record, problem = _json_record(run)
        if record is not None and not isinstance(record.get("key"), str):
            record, problem = None, 'no "key" entry'
        owners = _checkpoint_owners(folder) if record is None else {record["key"]}
        if owners and key not in owners:
            raise InputError(
                f"{out} holds checkpoints of a run with other settings, data or starting model; {other}"
            )
        if record is None:
            logger.warning(
                "%s is damaged (%s); rewriting it (each checkpoint's state.json says whose it is)",
                run,
                problem,
            )
    elif result.is_file():
        pass  # this run's record, damaged (or its model is): trained again, its files replaced
    elif out.is_dir() and any(p.name != _CHECKPOINTS or any(p.iterdir()) for p in out.iterdir()):
        raise InputError(f"{out} is not empty and holds no tunescope fine-tuning run; choose a new --out")
    return None
