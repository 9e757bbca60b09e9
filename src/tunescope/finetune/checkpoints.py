"""Per-epoch checkpoints: write, read, resume, prune; a damaged checkpoint is skipped with a warning.

``out/checkpoints/epoch-N/`` holds ``trainable.safetensors`` (the tensors that train), ``trainer_state.pt``
(optimizer, scheduler, random-generator state) and ``state.json`` (the run's key, the history so far,
the best epoch). Each is written to a temporary folder and renamed, so it is complete or absent;
:func:`_resume` restores the newest one whose three files read and fit this run, and skips each other
one with a warning (see :mod:`tunescope.finetune` for what happens to which damaged file).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunescope._io import atomic_dir, save_safetensors, write_json
from tunescope.errors import CacheError
from tunescope.models.loading import _TORCH_LOAD_ERRORS, _safetensors_problem, _torch_load_problem

if TYPE_CHECKING:
    from tunescope.finetune.config import FinetuneConfig

logger = logging.getLogger("tunescope.finetune")  # one logger for the package, as before the split

_CHECKPOINTS = "checkpoints"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def _json_record(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in ``path``, or ``None`` and why not (missing, empty, cut, not an object)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    if not data.strip():
        return None, "empty file"
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg}, line {exc.lineno} column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__} where an object belongs"
    return value, ""


def _open_checkpoints(out: Path, key: str, config: FinetuneConfig) -> Path:
    """Make ``out/checkpoints`` (its ``run.json`` naming this run) and clear what a killed export left."""
    folder = out / _CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".export.*"):  # left by a run killed while saving
        shutil.rmtree(stray, ignore_errors=True)
    run_file = folder / "run.json"
    run_record, _ = _json_record(run_file)
    if run_record is None or run_record.get("key") != key:  # new, or damaged (_check_out warned)
        write_json(run_file, {"key": key, "config": dataclasses.asdict(config)})
    return folder


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _write_checkpoint(
    folder: Path, epoch: int, model: nn.Module, trainer: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write ``folder/epoch-N`` atomically (a temporary folder renamed into place)."""
    final = folder / f"epoch-{epoch}"
    with atomic_dir(final) as tmp:
        save_safetensors(_trainable_state(model), tmp / "trainable.safetensors")
        torch.save(trainer, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    return final


def _epochs_on_disk(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := _EPOCH_DIR.match(p.name)))


def _damaged(path: Path, reason: str) -> CacheError:
    return CacheError(f"fine-tuning checkpoint file {path} is damaged ({reason})")


def _read_trainable(checkpoint: Path, model: nn.Module, *, load: bool = True) -> dict[str, torch.Tensor]:
    """The trainable tensors saved in ``checkpoint`` (``load=False``: only check names and shapes).

    Raises:
        CacheError: The file is missing, cut, overwritten or holds other tensors than ``model`` trains.
    """
    from safetensors import SafetensorError, safe_open

    path = checkpoint / "trainable.safetensors"
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {n: tuple(handle.get_slice(n).get_shape()) for n in handle.keys()}
            if shapes != expected:
                raise _damaged(path, "its tensors are not the ones this model trains")
            return {n: handle.get_tensor(n) for n in shapes} if load else {}
    except (SafetensorError, OSError) as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else _safetensors_problem(exc)
        raise _damaged(path, reason) from exc


def _read_trainer(checkpoint: Path) -> dict[str, Any]:
    """Optimizer, scheduler and RNG state saved in ``checkpoint`` (raises :class:`CacheError` if damaged)."""
    path = checkpoint / "trainer_state.pt"
    try:
        trainer = torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else _torch_load_problem(path, exc)
        raise _damaged(path, reason) from exc
    parts = ("optimizer", "scheduler", "rng")
    if not isinstance(trainer, dict) or not all(isinstance(trainer.get(k), dict) for k in parts):
        raise _damaged(path, "it lacks the optimizer, scheduler or random-generator state")
    if not isinstance(trainer["rng"].get("cpu"), torch.Tensor):
        raise _damaged(path, "it lacks the random-generator state")
    return trainer


def _read_state(checkpoint: Path, key: str, epoch: int) -> dict[str, Any]:
    """The ``state.json`` of ``checkpoint`` (epoch ``epoch`` of run ``key``); :class:`CacheError` if not."""
    path = checkpoint / "state.json"
    state, problem = _json_record(path)
    if state is None:
        raise _damaged(path, problem)
    if state.get("key") != key:
        raise CacheError(f"fine-tuning checkpoint {checkpoint} belongs to another run")
    try:
        fits = int(state["epoch"]) == epoch and 1 <= int(state["best_epoch"]) <= epoch
        float(state["best_value"])
    except (KeyError, TypeError, ValueError):
        fits = False
    history = state.get("history")
    if not (
        isinstance(history, list) and len(history) == epoch and all(isinstance(r, dict) for r in history)
    ):
        fits = False
    if not fits:
        raise _damaged(path, f"its entries do not describe epoch {epoch} of this run")
    return state


def _resume(
    folder: Path,
    key: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> dict[str, Any] | None:
    """Restore the newest usable checkpoint of ``folder``; return its state, or ``None`` if none is usable.

    The checkpoint's weights go into ``net``, its trainer state into ``optimizer``, ``scheduler`` and the
    RNG. A checkpoint is usable when its three files read and fit this run and the weights of its best
    epoch (which the final model will be) read too; each other one is skipped with a warning and changes
    nothing, so with none usable training starts afresh exactly as a new run does.
    """
    fresh = (copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict()), _rng_state(device))
    epochs = _epochs_on_disk(folder)
    for epoch in reversed(epochs):
        checkpoint = folder / f"epoch-{epoch}"
        try:
            state = _read_state(checkpoint, key, epoch)
            trainer = _read_trainer(checkpoint)
            tensors = _read_trainable(checkpoint, net)
            best = int(state["best_epoch"])
            if best != epoch:
                _read_trainable(folder / f"epoch-{best}", net, load=False)
            try:
                optimizer.load_state_dict(trainer["optimizer"])
                scheduler.load_state_dict(trainer["scheduler"])
                _set_rng_state(trainer["rng"], device)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                optimizer.load_state_dict(copy.deepcopy(fresh[0]))
                scheduler.load_state_dict(copy.deepcopy(fresh[1]))
                _set_rng_state(fresh[2], device)
                path = checkpoint / "trainer_state.pt"
                raise _damaged(path, f"it does not fit this optimizer: {exc}") from exc
        except CacheError as exc:
            logger.warning("%s; skipping checkpoint %s", exc, checkpoint.name)
            continue
        _copy_into(net, tensors)
        return state
    if epochs:
        logger.warning("no usable checkpoint in %s; fine-tuning again from epoch 1", folder)
    return None


def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into the parameters of ``model`` that have their names."""
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def _load_weights(model: nn.Module, checkpoint: Path) -> None:
    try:
        tensors = _read_trainable(checkpoint, model)
    except CacheError as exc:
        raise CacheError(
            f"{exc}; rerun the same command to train again from the checkpoints that are usable"
        ) from exc
    _copy_into(model, tensors)


def _prune(folder: Path, keep: set[int]) -> None:
    for epoch in _epochs_on_disk(folder):
        if epoch not in keep:
            shutil.rmtree(folder / f"epoch-{epoch}", ignore_errors=True)
    for stray in folder.glob(".epoch-*"):
        shutil.rmtree(stray, ignore_errors=True)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
