"""The models of one ``analyze`` run: loaded once (:class:`RunModels`) and fine-tuned (:class:`RunTraining`).

:class:`~tunescope.pipeline.RunContext` holds one of each (``ctx.models``, ``ctx.training``) and hands
its ``encoder``/``classifier``/``train`` calls on to them; they know the config and the device, never
the run's tables or manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tunescope.errors import InputError

if TYPE_CHECKING:
    from tunescope.finetune import FinetuneConfig, FinetuneResult
    from tunescope.models import Encoder
    from tunescope.pipeline import AnalyzeConfig

__all__ = ["RunModels", "RunTraining"]


class RunTraining:
    """How the run fine-tunes, and the models it fine-tuned (``RUN/models/<name>``), each trained once."""

    def __init__(
        self, config: AnalyzeConfig, folder: Path, device: torch.device, *, progress: bool, suffix: str = ""
    ) -> None:
        self.config = config
        self.folder = folder
        self.device = device
        self.progress = progress
        self.suffix = suffix  # "-seed1" for a seed other than the run's first: RUN/models/<name>-seed1
        self._trained: dict[str, FinetuneResult] = {}

    def finetune_config(self, **changes: Any) -> FinetuneConfig:
        """The run's epochs, learning rate, batch size, length and seed, with ``changes``."""
        from tunescope.finetune import FinetuneConfig

        settings: dict[str, Any] = {
            "epochs": self.config.epochs,
            "learning_rate": self.config.learning_rate,
            "batch_size": self.config.batch_size,
            "max_length": self.config.max_length or 128,
            "seed": self.config.seed,
            "patience": self.config.patience,
            "precision": self.config.precision,
        }
        return FinetuneConfig(**{**settings, **changes})

    def train(
        self, name: str, model: Any = None, *, experiment: bool = False, **changes: Any
    ) -> FinetuneResult:
        """Fine-tune ``model`` (default: the pre-trained one) on the run's task into ``RUN/models/<name>``.

        :meth:`finetune_config` with ``changes`` decides how; ``experiment``: on the fine-tuning
        experiments' examples (``experiment_train_limit``) rather than the run's. A finished run of the
        same model, data and config in that folder is reused, and an interrupted one resumes from its
        last epoch.
        """
        from tunescope.data import get_task
        from tunescope.finetune import finetune

        name = f"{name}{self.suffix}"
        if name not in self._trained:
            self._trained[name] = finetune(
                self.config.model if model is None else model,
                get_task(self.config.task),
                self.folder / name,
                config=self.finetune_config(**changes),
                data_dir=self.config.data_dir,
                train_limit=self.experiment_limit() if experiment else self.config.train_limit,
                validation_limit=self.config.limit,
                device=self.device,
                progress=self.progress,
            )
        return self._trained[name]

    def experiment_limit(self) -> int | None:
        """Training examples of the fine-tuning experiments: ``experiment_train_limit``, at most the run's."""
        run, experiment = self.config.train_limit, self.config.experiment_train_limit
        if experiment is None:
            return run
        return experiment if run is None else min(run, experiment)

    def experiment_full(self) -> FinetuneResult:
        """The experiments' ``full`` arm: every parameter trained on their examples, with the run's recipe.

        That is the run's own fine-tuned model (``RUN/models/tuned``) when the experiments train on the
        run's examples and no ``--tuned`` was given, else ``RUN/models/full``.
        """
        if self.config.tuned is None and self.experiment_limit() == self.config.train_limit:
            return self.train("tuned")
        return self.train("full", experiment=True)

    def records(self) -> dict[str, dict[str, Any]]:
        """Folder, validation metric and training time of each model fine-tuned so far."""
        return {
            name: {
                "path": str(result.path),
                "metric": result.metric,
                "best_value": result.best_value,
                "best_epoch": result.best_epoch,
                "train_seconds": round(result.train_seconds, 3),
                "trainable_parameters": result.trainable_parameters,
            }
            for name, result in self._trained.items()
        }


class RunModels:
    """The run's two models (``base`` and ``tuned``, named by ``config.labels``), each loaded once."""

    def __init__(
        self,
        config: AnalyzeConfig,
        device: torch.device,
        training: RunTraining,
        *,
        shared: RunModels | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.training = training
        self._encoders: dict[str, Encoder] = {}
        self._classifier: Encoder | None = None
        if shared is not None:  # another seed of the same run: the pre-trained model is the same
            first = config.labels[0]
            self._encoders.update({k: v for k, v in shared._encoders.items() if k == first})

    def has_tuned(self) -> bool:
        """Whether the run has a second model: given with ``--tuned``, or fine-tuned by the run."""
        return self.config.tuned is not None or self.config.finetune

    def names(self) -> list[str]:
        """The first model's label, plus the second's when the run has one."""
        first, second = self.config.labels
        return [first, second] if self.has_tuned() else [first]

    def tuned_source(self) -> str:
        """The fine-tuned model's folder or hub id: ``--tuned``, or the model this run fine-tunes."""
        if self.config.tuned is not None:
            return self.config.tuned
        if not self.config.finetune:
            raise InputError("this run has no fine-tuned model; pass --tuned DIR, or drop --no-finetune")
        return str(self.training.train("tuned").path)

    def classifier(self) -> Encoder:
        """The fine-tuned model with its task head (for evaluation), on the run's device."""
        if self._classifier is None:
            from tunescope.models import load_trained_classifier

            self._classifier = load_trained_classifier(
                self.tuned_source(), device=self.device, purpose=f"evaluating on {self.config.task}"
            )
        return self._classifier

    def encoder(self, which: str | None = None) -> Encoder:
        """The first (``base``) or second (``tuned``) model's encoder, on the run's device."""
        first, second = self.config.labels
        which = which or first
        if which not in self._encoders:
            from tunescope.models import load_encoder

            if which not in (first, second):
                raise InputError(f"no model called {which!r} in this run; it has {', '.join(self.names())}")
            source = self.config.model if which == first else self.tuned_source()
            self._encoders[which] = load_encoder(source, device=str(self.device))
        return self._encoders[which]

    def records(self) -> dict[str, dict[str, Any]]:
        """Name, folder, fingerprint and family of each model loaded so far, for the manifest."""
        records = {which: _record(encoder) for which, encoder in self._encoders.items()}
        if self._classifier is not None and self.config.labels[1] not in records:
            records[self.config.labels[1]] = _record(self._classifier)
        return records


def _record(encoder: Encoder) -> dict[str, Any]:
    path = str(encoder.path) if encoder.path is not None else None
    return {"name": encoder.name, "path": path, "fingerprint": encoder.fingerprint, "family": encoder.family}
