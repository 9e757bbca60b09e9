"""Fine-tuning: full, selected layers, classifier at layer k, or LoRA adapters; resumable per epoch.

:func:`finetune` trains a sequence classifier or regressor (``AutoModelForSequenceClassification``)
on a task's :class:`~tunescope.data.Examples`, or a tagger (``AutoModelForTokenClassification``) on
:class:`~tunescope.data.tokens.TokenExamples`, and writes a plain Hugging Face folder.

The loop is short on purpose: ``torch.optim.AdamW`` (Loshchilov & Hutter, 2019; no decay on biases
and LayerNorm weights), ``transformers.get_linear_schedule_with_warmup`` and gradient clipping at 1.0,
the recipe of Devlin et al. (2019) and of transformers' ``Trainer``. ``Trainer`` itself is not used: it
checkpoints by step, pulls in ``datasets``/``accelerate`` machinery, and its resume restores data order
only approximately; here a checkpoint is one *epoch* (model, optimizer, scheduler, RNG), the shuffle of
epoch ``e`` depends only on ``(seed, e)``, so a resumed run ends with the same weights as an
uninterrupted one.

Options (see :class:`FinetuneConfig`):

* ``train_layers``: only these transformer layers (1..L) and the classifier head train; embeddings and
  the other layers stay frozen (Lee et al., 2019, "What would Elsa do? Freezing layers during
  transformer fine-tuning").
* ``classifier_layer=k``: the model is cut after layer ``k`` and the head sits on top of it; the saved
  folder has ``num_hidden_layers = k`` (Merchant et al., 2020, "What happens to BERT embeddings during
  fine-tuning?", probe and fine-tune partial models the same way).
* ``adapter="lora"``: LoRA (Hu et al., 2022) through peft on the attention and FFN linears of the
  chosen layers; the head trains fully (peft ``modules_to_save``); the adapters are merged into the
  weights before saving, so plain transformers loads the folder.
* ``patience=p``: early stopping on the validation split (Prechelt, 1998, "Early stopping - but
  when?"): training ends once the primary metric has not improved for ``p`` epochs, ``epochs`` being
  the maximum, and with ``keep_best`` the best epoch is saved. The learning-rate schedule is laid out
  over the maximum. Where and why a run stopped is in ``FinetuneResult.stopped_epoch`` and
  ``stopped_early`` (and the record); a resumed run stops at the same epoch as an uninterrupted one.

Layout of ``out/`` while training::

    out/checkpoints/run.json              what this run is (its key); a rerun must match it
    out/checkpoints/epoch-N/              trainable.safetensors, trainer_state.pt, state.json
    out/config.json, model.safetensors,   the final model (written at the end)
    tokenizer files
    out/tunescope_finetune.json           config, history, metric, timings: written last

Each ``epoch-N`` folder is written to a temporary folder and renamed, so it is complete or absent; only
the latest and the best epoch are kept, and ``checkpoints/`` is removed once the final model is saved.

Files damaged on disk afterwards (a full disk, a cut copy, a hand edit) never end a rerun in a traceback,
and each is named in a warning (``logging``, which the CLI prints on stderr):

* a damaged ``trainable.safetensors``, ``trainer_state.pt`` or ``state.json`` makes its checkpoint
  unusable, and so does a checkpoint whose best epoch's weights are unusable (the final model is the
  best epoch's): it is skipped, training resumes from the newest usable checkpoint, or from the start if
  there is none, and ends with the weights an uninterrupted run ends with. Usable checkpoints are kept.
* a damaged ``checkpoints/run.json`` is rewritten: the ``state.json`` of each checkpoint names its run
  too, so the checkpoints of this run are still used, and checkpoints of another run still refuse
  ``out``.
* a damaged ``tunescope_finetune.json`` (or final ``model.safetensors``) means the run cannot be shown
  to be finished: it is trained again (resuming from checkpoints if any are left) and its files in
  ``out`` are replaced, the same as an interrupted run's. The record is only trusted, and ``out`` only
  refused as another run's, when the record can be read.

The package, by job: :mod:`~tunescope.finetune.config` (:class:`FinetuneConfig` and its checks,
:class:`FinetuneResult`), :mod:`~tunescope.finetune.labels` (the data, its labels and their checks),
:mod:`~tunescope.finetune.model` (the starting task model, what trains, the saved folder),
:mod:`~tunescope.finetune.checkpoints` (per-epoch checkpoints: write, read, resume, prune),
:mod:`~tunescope.finetune.record` (the run's key, progress and record; whether ``out`` holds it) and
:mod:`~tunescope.finetune.loop` (the epoch loop and validation). :func:`finetune` puts them together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from tunescope.data.examples import Examples
from tunescope.data.task import Task
from tunescope.data.tokens import TokenExamples
from tunescope.finetune.config import (
    ADAPTER_METHODS,
    PRECISIONS,
    FinetuneConfig,
    FinetuneResult,
    _check_config,
    resolve_precision,
)
from tunescope.finetune.labels import _checked_data, _resolve_task
from tunescope.finetune.loop import _rng_scope, _rows, _train
from tunescope.finetune.model import _check_model, _prepare_model, _trainable_model
from tunescope.finetune.record import RESULT_FILE as RESULT_FILE
from tunescope.finetune.record import _check_out, _run_key
from tunescope.models.loading import Encoder

# Importable here as before the split. finetune() looks _train up in this module; the steps of the
# loop are looked up in tunescope.finetune.loop, so that is where a patch of one of them takes effect.
from tunescope.finetune.loop import _export as _export  # isort: skip
from tunescope.finetune.loop import _prune as _prune  # isort: skip
from tunescope.finetune.loop import _train_epoch as _train_epoch  # isort: skip
from tunescope.finetune.loop import _validate as _validate  # isort: skip
from tunescope.finetune.loop import _write_checkpoint as _write_checkpoint  # isort: skip

__all__ = [
    "ADAPTER_METHODS",
    "PRECISIONS",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "resolve_precision",
]

logger = logging.getLogger(__name__)


def finetune(
    model: str | os.PathLike[str] | Encoder | None,
    task: Task | str | None,
    out: str | os.PathLike[str],
    *,
    config: FinetuneConfig = FinetuneConfig(),  # noqa: B008 - frozen, so a shared default is safe
    train: Examples | TokenExamples | None = None,
    validation: Examples | TokenExamples | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    train_limit: int | None = None,
    validation_limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune an encoder on a task and save the (best) model as a Hugging Face folder.

    Everything the user can get wrong is checked before ``out`` is touched. Training then checkpoints
    each epoch; rerunning the same call (same model, data and config) after an interruption resumes
    after the last complete epoch, and rerunning a finished call returns its result at once.

    Args:
        model: ``None`` for the embedded all-MiniLM-L6-v2; a folder or hub id, loaded with a head of
            ``task.num_labels`` outputs (fresh when the checkpoint has none); or an
            :class:`~tunescope.models.Encoder`: a base model gets a fresh head, a task model is used
            with its own head (which must fit the task). The Encoder is copied, never modified.
        task: A :class:`~tunescope.data.Task` or registry name; it gives the labels, the metric and,
            unless ``train``/``validation`` are given, the data. ``None`` needs both ``train`` and
            ``validation`` (e.g. :class:`TokenExamples` from a treebank).
        out: Output folder: new, empty, or the folder of this same run (to resume).
        config: Optimisation and what trains, see :class:`FinetuneConfig`.
        train: Training examples (default: the task's ``train`` split).
        validation: Validation examples (default: the task's validation split).
        data_dir: Folder with local copies of the task's data (GLUE layout).
        train_limit: Use the first ``train_limit`` training examples.
        validation_limit: Use the first ``validation_limit`` validation examples.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        progress: Progress bars on stderr.

    Returns:
        A :class:`FinetuneResult`; ``result.path`` loads with
        ``AutoModelForSequenceClassification.from_pretrained`` (``AutoModelForTokenClassification``
        for token tasks) and with :func:`tunescope.load_classifier`.

    Raises:
        InputError: A head that does not fit the task (number of labels, regression vs classes, token
            vs sequence), layers out of range, bad options, or an ``out`` folder of another run.
        DataError: Too little data (fewer than 2 examples in a split, fewer training examples than
            classes), a training split of one class, missing labels, labels that do not fit the task.
        UnknownNameError: Unknown task or adapter.
        MissingExtraError: ``adapter="lora"`` without peft installed.

    Example:
        >>> import numpy as np, tempfile
        >>> from tunescope.testing.tiny import tiny_model
        >>> texts = ["good fine nice", "bad awful poor"] * 4
        >>> ex = Examples(texts, None, np.array([1, 0] * 4), "demo", "train", ("neg", "pos"))
        >>> out = tempfile.mkdtemp()
        >>> result = finetune(tiny_model("bert"), None, out, train=ex, validation=ex,
        ...                   config=FinetuneConfig(epochs=2, learning_rate=1e-3), progress=False)
        >>> result.metric, result.best_epoch in (1, 2), (result.path / "config.json").is_file()
        ('accuracy', True, True)
    """
    from tunescope.models.loading import resolve_device

    torch_device = resolve_device(device)
    _check_config(config)
    resolved = resolve_precision(config.precision, torch_device)
    config = dataclasses.replace(config, precision=resolved)  # type: ignore[arg-type]  # fp32 or bf16
    task_obj = _resolve_task(task)
    train_ex, val_ex, labels = _checked_data(
        task_obj, train, validation, data_dir, train_limit, validation_limit
    )
    encoder = _prepare_model(model, labels, config.seed)
    _check_model(encoder, config)
    key = _run_key(config, labels, encoder.fingerprint, train_ex, val_ex)
    out_path = Path(out).expanduser()
    done = _check_out(out_path, key)
    if done is not None:
        logger.info("%s already holds this fine-tuning run; not retraining", out_path)
        return done

    train_rows, val_rows, collate = _rows(encoder, labels, config.max_length, train_ex, val_ex)
    with _rng_scope(config.seed, torch_device):
        net = _trainable_model(encoder, config)
        net.to(torch_device)
        return _train(
            net,
            encoder.tokenizer,
            labels,
            config,
            train_rows,
            val_rows,
            collate,
            out_path,
            key,
            torch_device,
            progress,
        )
