"""The training loop: AdamW with linear warm-up and decay, one checkpoint per epoch, validation.

:func:`_train` restores the newest usable checkpoint, runs the remaining epochs (each one trained by
:func:`_train_epoch`, validated by :func:`_validate` when due, then checkpointed and the older
checkpoints pruned) until all epochs are done or early stopping (``patience``) ends the run, and saves
the kept epoch's model and the run's record. The shuffle of epoch ``e``
depends only on ``(seed, e)``, so a resumed run ends with the weights of an uninterrupted one.

The steps are looked up here when called: tests patch ``_train_epoch``, ``_validate``,
``_write_checkpoint``, ``_prune`` and ``_export`` on this module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from tunescope._io import apply_umask, temp_dir, write_json
from tunescope._progress import track
from tunescope.data.examples import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.finetune.checkpoints import (
    _CHECKPOINTS,
    _load_weights,
    _open_checkpoints,
    _prune,
    _resume,
    _rng_state,
    _write_checkpoint,
)
from tunescope.finetune.config import MEGABATCH, MIN_MEGABATCHES, FinetuneConfig, FinetuneResult
from tunescope.finetune.labels import _Labels
from tunescope.finetune.model import _export, _parameter_counts
from tunescope.finetune.record import RESULT_FILE, _Progress, _record, _result_from_json
from tunescope.inference import collator, features, max_length_for, predict
from tunescope.metrics import score
from tunescope.models.loading import Encoder

logger = logging.getLogger("tunescope.finetune")  # one logger for the package, as before the split


def _rows(
    encoder: Encoder,
    labels: _Labels,
    max_length: int,
    train: Examples | TokenExamples,
    validation: Examples | TokenExamples,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Callable[[list[dict[str, Any]]], Any]]:
    """The tokenised training and validation rows, and the collator that pads them into batches."""
    tokenizer = encoder.tokenizer
    max_length = max_length_for(tokenizer, encoder.model.config, max_length)
    train_rows = features(tokenizer, train, max_length)
    val_rows = features(tokenizer, validation, max_length)
    return train_rows, val_rows, collator(tokenizer, labels.kind)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _optimizer(net: nn.Module, config: FinetuneConfig, n_rows: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``net``'s trainable parameters and its linear warm-up-then-decay schedule."""
    steps_per_epoch = math.ceil(n_rows / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(net, config.weight_decay), lr=config.learning_rate)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps
    )
    return optimizer, scheduler


def _batches(lengths: Sequence[int], config: FinetuneConfig, epoch: int) -> list[list[int]]:
    """Epoch ``epoch``'s batches of row indices; the order depends only on ``(config.seed, epoch)``.

    Random: a seeded permutation cut into batches. With ``config.group_by_length``: that permutation cut
    into mega-batches of :data:`MEGABATCH` batches (fewer when the epoch has under
    :data:`MIN_MEGABATCHES` of them, so that which examples share a batch still changes from epoch to
    epoch on small data), each sorted by length (longest first, ties in shuffled order) and cut into
    batches; the batches are then shuffled with the longest first. Either way there are
    ``ceil(n / batch_size)`` batches and every row is in exactly one.
    """
    n, size = len(lengths), config.batch_size
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if not config.group_by_length:
        return [order[start : start + size] for start in range(0, n, size)]
    mega = size * max(1, min(MEGABATCH, -(-n // size) // MIN_MEGABATCHES))
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[at : at + size] for at in range(0, len(chunk), size))
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]], default=0)
    if batches:
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def _train_epoch(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    epoch: int,
    config: FinetuneConfig,
    device: torch.device,
    progress: bool,
) -> float:
    """One pass over the training rows; returns the mean training loss per example."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total, seen = 0.0, 0
    batches = _batches([len(row["input_ids"]) for row in rows], config, epoch)
    description = f"epoch {epoch}/{config.epochs}"
    bf16 = config.precision == "bf16"
    for idx in track(batches, total=len(batches), description=description, enabled=progress):
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def _validate(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    labels: _Labels,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    preds, gold = predict(
        model,
        rows,
        collate,
        kind=labels.kind,
        regression=labels.regression,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    values = score(labels.metrics, preds, gold)
    values.pop("n")
    return values


@contextlib.contextmanager
def _rng_scope(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _train(
    net: nn.Module,
    tokenizer: Any,
    labels: _Labels,
    config: FinetuneConfig,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    out: Path,
    key: str,
    device: torch.device,
    progress: bool,
) -> FinetuneResult:
    """Train ``net`` for the epochs its checkpoints in ``out`` lack, then save the kept epoch's model."""
    optimizer, scheduler = _optimizer(net, config, len(train_rows))
    trainable, total = _parameter_counts(net)
    folder = _open_checkpoints(out, key, config)
    run = _start(folder, key, net, optimizer, scheduler, device, config.epochs)
    metric = labels.metrics[0]
    while not run.stops(config, metric):
        epoch = run.epoch + 1
        row = _epoch(
            net,
            train_rows,
            val_rows,
            collate,
            optimizer,
            scheduler,
            labels,
            epoch=epoch,
            config=config,
            device=device,
            progress=progress,
        )
        run.add(row, metric, selects=config.keep_best and config.eval_each_epoch)
        logger.info("epoch %d: %s", epoch, row)
        trainer = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(device),
        }
        _write_checkpoint(folder, epoch, net, trainer, run.state(key))
        _prune(folder, {epoch, run.best_epoch})
    if run.epoch < config.epochs:
        logger.info(
            "stopping early after epoch %d of %d: %s has not improved on epoch %d's for %d epochs",
            run.epoch,
            config.epochs,
            metric,
            run.epoch - run.since_best(metric),
            config.patience,
        )
    record = _record(
        key,
        labels,
        config,
        run,
        trainable=trainable,
        total=total,
        examples=(len(train_rows), len(val_rows)),
    )
    return _finish(net, tokenizer, out, record, last_epoch=run.epoch)


def _start(
    folder: Path,
    key: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    epochs: int,
) -> _Progress:
    """The progress of the newest usable checkpoint in ``folder`` (restored), or none: start at epoch 1."""
    state = _resume(folder, key, net, optimizer, scheduler, device)
    if state is None:
        return _Progress()
    run = _Progress(
        epoch=int(state["epoch"]),
        history=state["history"],
        best_epoch=int(state["best_epoch"]),
        best_value=float(state["best_value"]),
    )
    logger.warning(
        "resuming fine-tuning in %s after epoch %d of %d (checkpoint %s)",
        folder.parent,
        run.epoch,
        epochs,
        folder / f"epoch-{run.epoch}",
    )
    return run


def _epoch(
    net: nn.Module,
    train_rows: Sequence[dict[str, Any]],
    val_rows: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    labels: _Labels,
    *,
    epoch: int,
    config: FinetuneConfig,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Train epoch ``epoch`` and validate when due: its history row (loss, metrics, timings)."""
    began = time.perf_counter()
    loss = _train_epoch(
        net,
        train_rows,
        collate,
        optimizer,
        scheduler,
        epoch=epoch,
        config=config,
        device=device,
        progress=progress,
    )
    row: dict[str, Any] = {"epoch": epoch, "train_loss": loss, "seconds": time.perf_counter() - began}
    if config.eval_each_epoch or epoch == config.epochs:
        eval_batch = max(config.batch_size, 64)
        began = time.perf_counter()
        row.update(
            _validate(net, val_rows, collate, labels, batch_size=eval_batch, device=device, progress=progress)
        )
        row["eval_seconds"] = time.perf_counter() - began
    return row


def _finish(
    net: nn.Module, tokenizer: Any, out: Path, record: dict[str, Any], *, last_epoch: int
) -> FinetuneResult:
    """Save the kept epoch's model into ``out``, then its ``record`` (last), and drop the checkpoints.

    The model is written to a staging folder (LoRA adapters merged) whose files are moved into ``out``.
    """
    folder = out / _CHECKPOINTS
    best_epoch = int(record["best_epoch"])
    if best_epoch != last_epoch:
        _load_weights(net, folder / f"epoch-{best_epoch}")
    net.eval()
    with temp_dir(out, "export") as staging:
        _export(net, tokenizer, staging)
        apply_umask(staging)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    write_json(out / RESULT_FILE, record)
    shutil.rmtree(folder, ignore_errors=True)
    return _result_from_json(out, record)
