"""``analyze``: wire the analysis stages, cache what they need, record everything in a run folder.

The pipeline holds no maths. A stage is a function of a :class:`RunContext` that returns tidy tables
(one row per measurement); the pipeline checks every input before it writes anything, writes the tables
to ``RUN/results/<table>.csv`` atomically, records the stage's status, timing and table hashes in
``RUN/manifest.json`` (see :mod:`tunescope.runfolder`), and skips a stage whose tables the manifest still
vouches for under the same configuration (so a killed or interrupted run resumes where it stopped).
Adding an analysis is adding one stage module that calls :func:`register_stage`, and one report section
(see :mod:`tunescope.report`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from tunescope import runfolder
from tunescope.errors import InputError, RunFolderError, UnknownNameError
from tunescope.models.loading import resolve_device
from tunescope.runfolder import MANIFEST, read_manifest

if TYPE_CHECKING:
    from tunescope.data import Examples, Task
    from tunescope.extract import Representations
    from tunescope.finetune import FinetuneConfig, FinetuneResult
    from tunescope.models import Encoder

__all__ = [
    "AnalyzeConfig",
    "RunContext",
    "Stage",
    "Table",
    "STAGES",
    "register_stage",
    "ordered",
    "analyze",
    "resolve_device",
    "read_manifest",
]

logger = logging.getLogger(__name__)

MAX_SEEDS = 10
"""Most fine-tuning seeds one run accepts (each repeats every fine-tuning of the run)."""


@dataclass(frozen=True)
class AnalyzeConfig:
    """Everything that decides what ``analyze`` computes (recorded in the manifest).

    Attributes:
        out: the run folder.
        model: pre-trained encoder (folder or hub id); None = the embedded all-MiniLM-L6-v2.
        tuned: a fine-tuned model to compare with the pre-trained one, if any.
        task: task name from the registry.
        data_dir: local folder for tasks that are not builtin (GLUE TSV layout).
        split: which split of the task the representations are computed on.
        limit: at most this many examples of that split (None = all).
        pooling: sentence pooling for the representation analyses (``cls``, ``mean`` or ``mean_no_special``;
            see :data:`tunescope.extract.POOLINGS`), or several separated by commas (``"cls,mean"``): the
            representational stages (``layers``, ``similarity``, ``domains``) then run once per pooling,
            their tables gain a ``pooling`` column, and the report says where the conclusions differ. The
            first is the pooling the rest of the report describes.
        batch_size: examples per forward pass.
        max_length: truncate inputs to this many tokens.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        seed: seed for everything random.
        seeds: fine-tuning seeds: the stages that fine-tune or evaluate a fine-tuned model run once per
            seed, and their tables gain a ``seed`` column (None: ``(seed,)``). The first is the run's
            ``seed`` (it replaces the ``seed`` field), so its model is the one the other stages analyse.
        n_boot: bootstrap resamples behind every interval (``ci_low``/``ci_high``), at least 100.
        confidence: coverage of those intervals, in (0, 1).
        stages: names of the stages to run (default: all registered, in order).
        labels: what the two models are called in tables and figures (``base``/``tuned`` in
            ``analyze``; ``compare`` uses ``A``/``B``).
        finetune: when ``tuned`` is not given, fine-tune ``model`` on the task (stage ``finetune``; the
            model is kept in ``RUN/models/tuned`` and reused by later runs). False: analyse one model.
        epochs, learning_rate, train_limit: how ``analyze`` fine-tunes (the ``finetune`` stage and the
            fine-tuning experiments of ``ffn``, ``selection`` and ``heads``): passes over the data, peak
            AdamW learning rate, and the first ``train_limit`` training examples (None = all).
        experiment_train_limit: the fine-tuning experiments (FFN removal, the selection arms,
            prune-then-tune) train every arm, their own ``full`` arm included, on the first this many
            training examples (None = ``train_limit``): each compares arms trained alike, which does
            not need the run's whole training set. When it is no smaller than ``train_limit`` the run's
            own fine-tuned model is the ``full`` arm.
        patience: early stopping of that fine-tuning: stop once the validation metric (on the run's
            ``limit`` validation examples) has not improved for ``patience`` epochs, ``epochs`` being
            the maximum, and keep the best epoch (None: train all ``epochs``; see
            :class:`~tunescope.finetune.FinetuneConfig`).
        precision: the precision of every fine-tuning of the run (``fp32``, ``bf16`` or ``auto``: bf16
            where the device computes bfloat16 natively, else fp32; see
            :data:`tunescope.finetune.PRECISIONS`). Mixed precision keeps float32 weights and
            optimiser state; extraction, evaluation, probes and head importance run in float32 either
            way, so only the trained weights depend on it.
        options: each stage's own options, by stage name: an instance of the stage's options dataclass
            or a mapping of its fields (``{"variability": {"budget": 3}}``); stages left out keep their
            defaults. Read them with :meth:`options_for`; see :mod:`tunescope.options`.
    """

    out: Path = Path("runs/latest")
    model: str | None = None
    tuned: str | None = None
    task: str = "movie-sentiment"
    data_dir: str | None = None
    split: str = "validation"
    limit: int | None = 1000
    pooling: str = "mean"
    batch_size: int = 32
    max_length: int | None = 128
    device: str = "auto"
    seed: int = 0
    seeds: tuple[int, ...] | None = None
    n_boot: int = 1000
    confidence: float = 0.95
    stages: tuple[str, ...] | None = None
    labels: tuple[str, str] = ("base", "tuned")
    finetune: bool = True
    epochs: int = 3
    learning_rate: float = 5e-5
    train_limit: int | None = None
    experiment_train_limit: int | None = 2000
    patience: int | None = 1
    precision: str = "auto"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = (
            ("epochs", self.epochs >= 1, "at least 1 (--epochs)"),
            ("learning_rate", self.learning_rate > 0, "positive (--lr)"),
            ("batch_size", self.batch_size >= 1, "at least 1 (--batch-size)"),
            ("train_limit", self.train_limit is None or self.train_limit >= 2, "at least 2 (--train-limit)"),
            (
                "experiment_train_limit",
                self.experiment_train_limit is None or self.experiment_train_limit >= 2,
                "at least 2 (--experiment-train-limit)",
            ),
            ("patience", self.patience is None or self.patience >= 1, "at least 1 or None (--patience)"),
            ("limit", self.limit is None or self.limit >= 2, "at least 2 (--limit)"),
            ("n_boot", self.n_boot >= 100, "at least 100 resamples (--n-boot)"),
            ("confidence", 0 < self.confidence < 1, "a level strictly between 0 and 1 (--confidence)"),
        )
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"{name} must be {want}, got {getattr(self, name)!r}")
        if self.max_length is not None and self.max_length < 2:
            raise InputError(f"max_length must be at least 2 or None, got {self.max_length!r}")
        from tunescope.extract import SENTENCE_POOLINGS

        names = [p.strip() for p in str(self.pooling).split(",") if p.strip()]
        if not names or len(set(names)) != len(names):
            raise InputError(f"--pooling takes distinct pooling names such as cls,mean; got {self.pooling!r}")
        for name in names:
            if name not in SENTENCE_POOLINGS:
                raise UnknownNameError("sentence pooling", name, SENTENCE_POOLINGS, hint="fix --pooling")
        object.__setattr__(self, "pooling", ",".join(names))
        if len(self.labels) != 2 or self.labels[0] == self.labels[1]:
            raise InputError(f"labels must name the two models differently, got {self.labels!r}")
        resolve_device(self.device)
        from tunescope.finetune.config import PRECISIONS

        if self.precision not in PRECISIONS:
            raise UnknownNameError(
                "training precision", str(self.precision), PRECISIONS, hint="fix --precision"
            )
        if self.seeds is not None:
            seeds = tuple(self.seeds)
            if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
                raise InputError(
                    f"seeds must be distinct whole numbers such as 0,1,2 (--seeds), got {self.seeds!r}"
                )
            object.__setattr__(self, "seeds", seeds)
            object.__setattr__(self, "seed", seeds[0])
            if len(seeds) > MAX_SEEDS:
                raise InputError(
                    f"--seeds lists {len(seeds)} seeds; each one repeats every fine-tuning of the run (the "
                    "fine-tuned model, and the ffn, selection and head-transfer experiments: about 6 "
                    f"fine-tunings per seed, {6 * len(seeds)} here) and the evaluations of the stages "
                    f"truncation, ablation and heads; use at most {MAX_SEEDS} (3 to 5 show the spread)"
                )
        object.__setattr__(self, "options", _stage_options(self.options))

    @property
    def poolings(self) -> tuple[str, ...]:
        """The sentence poolings of ``pooling`` (the first is the report's main one)."""
        return tuple(self.pooling.split(","))

    @property
    def fit_seeds(self) -> tuple[int, ...]:
        """The fine-tuning seeds: ``seeds``, or ``(seed,)`` when none were given."""
        return self.seeds if self.seeds is not None else (self.seed,)

    def options_for(self, stage: str) -> Any:
        """The options of ``stage`` (its options dataclass, with the defaults where none were given)."""
        if stage not in self.options:
            raise InputError(f"stage {stage} has no options (stages with options: {', '.join(self.options)})")
        return self.options[stage]

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON values; stage options flat, as ``stage.option`` keys."""
        from tunescope.options import option_values

        shared = {
            f.name: (str(v) if isinstance(v, Path) else v)
            for f in dataclasses.fields(self)
            if f.name != "options"
            for v in [getattr(self, f.name)]
        }
        shared = json.loads(json.dumps(shared))  # tuples become lists, as in the manifest
        for stage, values in self.options.items():
            shared.update(option_values(stage, values))
        return shared

    @classmethod
    def from_toml(
        cls,
        path: str | Path,
        *,
        overrides: Mapping[str, Any] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> AnalyzeConfig:
        """A config from a TOML file (top-level keys: the fields; one table per stage's options).

        ``overrides`` (fields) and ``options`` (``{stage: {option: value}}``) win over the file, as
        command-line flags win over ``--config``. Strings are read as the flags read them; ``limit`` and
        ``train_limit`` of 0 (or ``"none"``) mean all examples, as on the command line.

        Raises:
            InputError: the file is not TOML, or names an unknown field, stage or option, or a value of
                the wrong type.
        """
        from tunescope.options import read_config_file

        shared, stage_tables = read_config_file(path)
        merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in stage_tables.items()}
        for stage, values in (options or {}).items():
            merged.setdefault(stage, {}).update(values)
        fields = {**{k: _field_value(k, v, f"{path}: {k}") for k, v in shared.items()}, **(overrides or {})}
        return cls(**fields, options=merged)

    def digest(self) -> str:
        """Hash of what the results depend on (not the output folder, device or stage list)."""
        relevant = {k: v for k, v in self.to_json().items() if k not in {"out", "device", "stages"}}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Table:
    """A tidy result table: one mapping per row, with its column order."""

    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    key: tuple[str, ...] = ()
    """Columns that name a row across fine-tuning seeds (e.g. ``layers_kept``): with several seeds, the
    rows of a seeded stage's keyed table are summarised across seeds in ``<name>_seeds``."""


@dataclass(frozen=True)
class Stage:
    """One analysis: what it is called, what it needs, and the function that computes its tables.

    A stage is a package (``tunescope/stages/<name>/``, or any package named in the ``tunescope.stages``
    entry-point group) whose ``__init__`` defines ``STAGE = Stage(...)``; next to it, ``section.py``
    (a ``build(sec)`` function) and ``section.html.j2`` make its part of the report. Discovery
    (:func:`tunescope.stages.discover`) finds it; :func:`ordered` runs it after the stages it ``needs``
    and those it prefers to come ``after``.
    """

    name: str
    title: str
    run: Callable[[RunContext], Sequence[Table]]
    needs: tuple[str, ...] = ()
    """Stages whose tables or models this one uses: it runs after them, and is skipped if they did not run."""
    after: tuple[str, ...] = ()
    """Stages this one comes after when they run too (the order of the report); no dependency."""
    description: str = ""
    check: Callable[[RunContext], None] | None = None
    """Validates the stage's options against the config, data and models before ``analyze`` writes
    anything (raises on bad input); the models and examples it asks the context for are loaded once."""
    min_examples: int | Callable[[AnalyzeConfig], int] = 2
    """The fewest analysis examples the stage can work with under a config (checked up front)."""
    package: str | None = None
    """The package that declares the stage (set by discovery): where its report section lives."""
    options: type | None = None
    """The stage's options: a frozen dataclass whose fields are made by :func:`tunescope.options.option`
    (the CLI's ``--<stage>.<option>`` flags and the config file's ``[<stage>]`` table come from it)."""
    seeded: bool = False
    """The stage fine-tunes, or evaluates a fine-tuned model: it runs once per seed of ``--seeds`` and
    its tables gain a ``seed`` column (:mod:`tunescope.seeds`)."""
    pooled: bool = False
    """The stage analyses sentence representations: it runs once per pooling of ``--pooling`` and its
    tables gain a ``pooling`` column."""

    def fewest_examples(self, config: AnalyzeConfig) -> int:
        """:attr:`min_examples` under ``config``."""
        return self.min_examples(config) if callable(self.min_examples) else self.min_examples


STAGES: dict[str, Stage] = {}
"""Every known stage by name: filled by discovery (:mod:`tunescope.stages`) and :func:`register_stage`."""


def register_stage(stage: Stage) -> Stage:
    """Add (or replace) a stage in the registry; discovery adds the stages it finds the same way."""
    STAGES[stage.name] = stage
    return stage


def ordered(names: Iterable[str] | None = None) -> list[str]:
    """``names`` (default: every registered stage) in run order: each after what it ``needs`` and,
    among those given, after what it prefers to come ``after``; ties keep discovery order.

    Raises:
        InputError: the stages' ``needs``/``after`` form a cycle.
    """
    chosen = list(STAGES if names is None else names)
    rank = {name: i for i, name in enumerate(STAGES)}
    chosen.sort(key=lambda name: rank.get(name, len(rank)))
    present = set(chosen)
    before = {
        name: {d for d in (*STAGES[name].needs, *STAGES[name].after) if d in present and d != name}
        for name in chosen
    }
    result: list[str] = []
    while chosen:
        ready = next((name for name in chosen if not before[name] - set(result)), None)
        if ready is None:
            raise InputError(f"the stages {', '.join(chosen)} wait for each other (needs/after form a cycle)")
        result.append(ready)
        chosen.remove(ready)
    return result


class RunContext:
    """What stages share in one run: the config, its folders, the data, memoised representations and notes.

    Loading the run's models is :class:`~tunescope.runmodels.RunModels`' job (``ctx.models``) and
    fine-tuning :class:`~tunescope.runmodels.RunTraining`'s (``ctx.training``); the manifest belongs to
    :mod:`tunescope.runfolder`. The methods ``encoder``, ``classifier``, ``tuned_source``, ``train``
    and ``finetune_config`` hand on to those two, so a stage reads everything from ``ctx``.
    """

    def __init__(self, config: AnalyzeConfig, *, progress: bool = True) -> None:
        from tunescope.runmodels import RunModels, RunTraining

        self.config = config
        self.root = Path(config.out)
        self.device = resolve_device(config.device)
        self.progress = progress
        self._reps: dict[tuple[str, str, str], Representations] = {}
        self._examples: dict[str, Examples] = {}
        self.notes: dict[str, None] = {}  # ordered set of remarks for the report
        self.training = RunTraining(config, self.models_dir, self.device, progress=progress)
        self.models = RunModels(config, self.device, self.training)
        self._seeds: dict[int, RunContext] = {}

    def for_pooling(self, pooling: str) -> RunContext:
        """This run with ``pooling`` as its sentence pooling (the same models, examples and caches)."""
        if pooling == self.config.pooling:
            return self
        view = RunContext.__new__(RunContext)
        view.__dict__.update(self.__dict__)
        view.config = dataclasses.replace(self.config, pooling=pooling)
        return view

    def for_seed(self, seed: int) -> RunContext:
        """This run as fine-tuned with ``seed``: the same data and pre-trained model, its own tuned models.

        The run's own seed (the first of ``--seeds``) is the run itself: its fine-tuned model is
        ``RUN/models/tuned``, the one the representation stages analyse. Another seed's models go to
        ``RUN/models/<name>-seed<seed>``. Notes go to the run's report.
        """
        from tunescope.runmodels import RunModels, RunTraining

        if seed == self.config.seed:
            return self
        if seed not in self._seeds:
            view = RunContext.__new__(RunContext)
            view.__dict__.update(self.__dict__)
            view.config = dataclasses.replace(self.config, seeds=None, seed=seed)
            view.training = RunTraining(
                view.config, self.models_dir, self.device, progress=self.progress, suffix=f"-seed{seed}"
            )
            view.models = RunModels(view.config, self.device, view.training, shared=self.models)
            view._reps = {}
            view._seeds = {}
            self._seeds[seed] = view
        return self._seeds[seed]

    def note(self, text: str) -> None:
        """Record a remark about the run (shown at the top of the report)."""
        self.notes[text] = None

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def task(self) -> Task:
        from tunescope.data import get_task

        return get_task(self.config.task)

    @property
    def models_dir(self) -> Path:
        """Where the run keeps the models it trains (``RUN/models``)."""
        return self.root / "models"

    def has_tuned(self) -> bool:
        """Whether the run has a second model: given with ``--tuned``, or fine-tuned by the run."""
        return self.models.has_tuned()

    def model_names(self) -> list[str]:
        """The first model's label (``base``), plus the second's (``tuned``) when the run has one."""
        return self.models.names()

    def finetune_config(self, **changes: Any) -> FinetuneConfig:
        """How this run fine-tunes, with ``changes`` (:meth:`.RunTraining.finetune_config`)."""
        return self.training.finetune_config(**changes)

    def train(
        self, name: str, model: Any = None, *, experiment: bool = False, **changes: Any
    ) -> FinetuneResult:
        """Fine-tune into ``RUN/models/<name>``, or reuse it (:meth:`.RunTraining.train`)."""
        return self.training.train(name, model, experiment=experiment, **changes)

    def experiment_full(self) -> FinetuneResult:
        """The ``full`` arm of the fine-tuning experiments (:meth:`.RunTraining.experiment_full`)."""
        return self.training.experiment_full()

    def tuned_source(self) -> str:
        """The fine-tuned model's folder or hub id: ``--tuned``, or the model this run fine-tunes."""
        return self.models.tuned_source()

    def has_classifier(self, stage: str) -> bool:
        """Whether the run has a fine-tuned classifier for the task; if not, a note says why ``stage`` skips.

        A ``--tuned`` model without a trained sequence-classification head (a base model compared with
        another) still serves the representation stages; the stages that evaluate it on the task skip.
        """
        if not self.has_tuned():
            self.note(f"{stage}: no fine-tuned model in this run (pass --tuned DIR), so it is skipped.")
            return False
        try:
            self.classifier()
        except InputError as err:
            self.note(f"{stage}: skipped, because {err}")
            return False
        return True

    def classifier(self) -> Encoder:
        """The fine-tuned model with its task head, loaded once (:meth:`.RunModels.classifier`)."""
        return self.models.classifier()

    def encoder(self, which: str | None = None) -> Encoder:
        """The ``base`` or ``tuned`` model's encoder, loaded once (:meth:`.RunModels.encoder`)."""
        return self.models.encoder(which)

    def model_records(self) -> dict[str, dict[str, Any]]:
        """Name, folder, fingerprint and family of each model the run loaded, for the manifest."""
        return self.models.records()

    def trained_records(self) -> dict[str, dict[str, Any]]:
        """Folder, validation metric and training time of each model the run fine-tuned (every seed)."""
        records = self.training.records()
        for view in self._seeds.values():
            records.update(view.training.records())
        return records

    def examples(
        self,
        split: str | None = None,
        *,
        limit: int | None | Literal["config"] = "config",
        seed: int | None = None,
    ) -> Examples:
        """Examples of the run's task (the analysis split by default), loaded once per run.

        Args:
            split: which split (default ``config.split``).
            limit: at most this many examples (default ``config.limit``; None = all of the split).
            seed: None: the split's first ``limit`` examples. Else ``limit`` examples drawn without
                replacement by ``numpy.random.default_rng(seed)`` from the whole split, kept in the split's
                order (the whole split when it has no more than ``limit``).
        """
        import numpy as np

        split = split or self.config.split
        limit = self.config.limit if limit == "config" else limit
        key = split if (limit == self.config.limit and seed is None) else f"{split}:{limit}:{seed}"
        if key not in self._examples:
            load = self.task.load
            if seed is None:
                self._examples[key] = load(split, data_dir=self.config.data_dir, limit=limit)
            else:
                every = load(split, data_dir=self.config.data_dir)
                if limit is None or limit >= len(every):
                    self._examples[key] = every
                else:
                    rng = np.random.default_rng(seed)
                    self._examples[key] = every.subset(np.sort(rng.choice(len(every), limit, replace=False)))
        return self._examples[key]

    def representations(
        self,
        which: str | None = None,
        split: str | None = None,
        pooling: str | None = None,
        *,
        limit: int | None | Literal["config"] = "config",
        seed: int | None = None,
        drop_constant: bool = True,
    ) -> Representations:
        """Every layer of ``which`` model on ``split``, extracted once per run (and cached on disk).

        ``limit`` and ``seed`` choose the examples as in :meth:`examples`. With ``drop_constant`` (the
        default), layers that give the same vector for every input (layer 0 under ``cls`` pooling) are
        left out, since similarity and variance are undefined there; a note says so in the report.
        """
        from tunescope.extract import extract

        which = which or self.config.labels[0]
        split = split or self.config.split
        pooling = pooling or self.config.pooling
        chosen = split if (limit == "config" and seed is None) else f"{split}:{limit}:{seed}"
        key = (which, chosen, pooling)
        if key not in self._reps:
            self._reps[key] = extract(
                self.encoder(which),
                self.examples(split, limit=limit, seed=seed),
                pooling=pooling,
                batch_size=self.config.batch_size,
                max_length=self.config.max_length,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
        reps = self._reps[key]
        constant = reps.constant_layers() if drop_constant else ()
        if constant:
            self.note(
                f"{which} model: layer(s) {', '.join(map(str, constant))} give the same vector for every "
                f"input under {pooling} pooling, so they are left out of the analyses."
            )
            reps = reps.select([layer for layer in reps.layers if layer not in constant])
        return reps


def _field_value(name: str, value: Any, where: str) -> Any:
    """A shared field's value from a config file, checked against the field's type."""
    import typing

    from tunescope.options import typed_value

    hints = typing.get_type_hints(AnalyzeConfig, globals())
    if name not in hints or name == "options":
        valid = [f.name for f in dataclasses.fields(AnalyzeConfig) if f.name != "options"]
        raise UnknownNameError("config field", name, valid, hint="a stage's options go in a [stage] table")
    if name in ("limit", "train_limit", "experiment_train_limit") and value in (0, "0"):
        return None
    value = typed_value(value, hints[name], where)
    return Path(value) if name == "out" else value


def _stage_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every stage's options object: those given (instances or mappings), the defaults for the rest."""
    from tunescope.options import make_options
    from tunescope.stages import discover

    if not isinstance(given, Mapping):
        raise InputError(f"options must map stage names to their options, got {type(given).__name__}")
    discover()
    declared = {name: stage.options for name, stage in STAGES.items() if stage.options is not None}
    for name in given:
        if name not in declared:
            if name in STAGES:
                raise InputError(f"stage {name} has no options; stages with options: {', '.join(declared)}")
            hint = "fix the [stage] table or --STAGE.OPTION"
            raise UnknownNameError("stage", str(name), declared, hint=hint)
    return {name: make_options(name, cls, given.get(name)) for name, cls in declared.items()}


def analyze(config: AnalyzeConfig | None = None, *, progress: bool = True, report: bool = True) -> Path:
    """Run every stage of the analysis and write the run folder; returns the path of the run folder.

    Everything the user can get wrong is checked before the folder is touched: the output location, the
    stage names and options, the task and its examples (enough for every stage), and both models (loaded
    here). Stages whose tables the manifest vouches for (same configuration, same bytes) are skipped, so
    rerunning after an interruption resumes where the previous run stopped; a damaged table is recomputed
    with a warning. When the configuration changed, what the earlier one wrote is moved aside
    (:func:`tunescope.runfolder.retire`), so no stale table is ever shown as current.

    Args:
        config: what to analyse (defaults: the embedded model and the ``movie-sentiment`` task).
        progress: show progress bars on stderr.
        report: build ``report.html`` at the end.
    """
    from tunescope.stages import discover

    discover()
    config = config or AnalyzeConfig()
    for name in config.stages or ():
        if name not in STAGES:
            raise UnknownNameError("stage", name, STAGES, hint="fix --stages")
    names = ordered(config.stages)
    root = runfolder.check_run_folder(config.out)
    torch.manual_seed(config.seed)
    ctx = RunContext(config, progress=progress)
    _check_inputs(ctx, names)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(root, config)
    digest = config.digest()
    reused = [n for n in names if _is_done(root, manifest["stages"].get(n, {}), digest)]
    if reused:
        logger.info("resuming %s: stage(s) %s already done, their tables are reused", root, ", ".join(reused))
    for name in names:
        stage = STAGES[name]
        record = manifest["stages"].get(name, {})
        if name in reused:
            continue
        if record.get("status") == "done" and record.get("config") == digest:
            bad = runfolder.damaged_outputs(root, record)
            logger.warning("%s damaged or missing; recomputing stage %s", ", ".join(bad), name)
        missing = [r for r in stage.needs if manifest["stages"].get(r, {}).get("status") != "done"]
        if missing:
            manifest["stages"][name] = {"status": "skipped", "reason": f"needs {', '.join(missing)}"}
            continue
        start = time.perf_counter()
        manifest["stages"][name] = {"status": "running", "config": digest, "started": _now()}
        runfolder.write_manifest(root, manifest)
        try:
            tables = _run_stage(stage, ctx)
            outputs = [runfolder.write_table(root, t.name, t.rows, t.columns) for t in tables]
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            manifest["stages"][name] = {
                "status": "interrupted" if interrupted else "failed",
                "config": digest,
                "seconds": round(time.perf_counter() - start, 3),
                **({} if interrupted else {"error": f"{type(err).__name__}: {_first_line(err)}"}),
            }
            _record(manifest, ctx)
            runfolder.write_manifest(root, manifest)
            raise
        manifest["stages"][name] = {
            "status": "done",
            "config": digest,
            "seconds": round(time.perf_counter() - start, 3),
            "outputs": outputs,
        }
        _record(manifest, ctx)
        runfolder.write_manifest(root, manifest)
    if report:
        from tunescope.report import build_report

        build_report(root)
    return root


def _run_stage(stage: Stage, ctx: RunContext) -> list[Table]:
    """The stage's tables; a seeded stage runs once per fine-tuning seed and a pooled one once per
    sentence pooling, their tables stacked with a ``seed`` or ``pooling`` column."""
    from tunescope.seeds import combine, stack

    if stage.pooled:
        return stack("pooling", [(p, stage.run(ctx.for_pooling(p))) for p in ctx.config.poolings])
    if stage.seeded:
        per_seed = [(seed, stage.run(ctx.for_seed(seed))) for seed in ctx.config.fit_seeds]
        return combine(per_seed, level=ctx.config.confidence)
    return list(stage.run(ctx))


def load_table(run_dir: str | Path, name: str) -> list[dict[str, str]]:
    """Rows of ``RUN/results/<name>.csv`` that the manifest vouches for (``[]`` when no stage wrote it)."""
    return runfolder.load_table(run_dir, name)


def _check_inputs(ctx: RunContext, names: Sequence[str]) -> None:
    """Every check that needs the task, its examples or the models, before the run folder is touched."""
    config = ctx.config
    ctx.task  # noqa: B018  (an unknown task fails here)
    examples = ctx.examples()
    fewest = {name: STAGES[name].fewest_examples(config) for name in names}
    need = max(fewest.values(), default=1)
    if len(examples) < need:
        which = max(fewest, key=lambda name: fewest[name])
        capped = config.limit is not None and len(examples) == config.limit
        raise InputError(
            f"the {config.split} split of {config.task} gives {len(examples)} example(s); stage {which} "
            f"needs at least {need}; {'raise --limit' if capped else 'use more data'} (or leave {which} "
            "out of --stages)"
        )
    ctx.encoder()  # a bad or offline model fails here
    if config.tuned is not None:
        ctx.encoder(config.labels[1])
    for name in names:
        check = STAGES[name].check
        if check is not None:
            check(ctx)


def _is_done(root: Path, record: Mapping[str, Any], digest: str) -> bool:
    return (
        record.get("status") == "done"
        and record.get("config") == digest
        and not runfolder.damaged_outputs(root, record)
    )


def _record(manifest: dict[str, Any], ctx: RunContext) -> None:
    """Fold what the run learnt so far (models, trained models, notes) into the manifest."""
    manifest["models"] = {**manifest.get("models", {}), **ctx.model_records()}
    manifest["trained"] = {**manifest.get("trained", {}), **ctx.trained_records()}
    manifest["notes"] = list(dict.fromkeys([*manifest.get("notes", []), *ctx.notes]))
    manifest["updated"] = _now()


def _start_manifest(root: Path, config: AnalyzeConfig) -> dict[str, Any]:
    """The manifest this run starts from: the earlier one if it ran this configuration, else a new one.

    A manifest of another configuration, or a damaged one, retires what it vouched for (moved aside).
    """
    import transformers

    import tunescope

    previous: dict[str, Any] | None = None
    note = None
    if (root / MANIFEST).exists():
        try:
            previous = runfolder.read_manifest(root)
        except RunFolderError as err:
            logger.warning("%s", err)
            note = runfolder.retire(root, None, f"{MANIFEST} was damaged, so the run started afresh")
    elif (root / runfolder.RESULTS).exists():
        note = runfolder.retire(root, None, f"the folder held results but no {MANIFEST}")
    if previous is not None and previous.get("config_digest") != config.digest():
        changes = runfolder.config_changes(previous.get("config", {}), config.to_json())
        note = runfolder.retire(root, previous, f"the configuration changed ({changes})")
        previous = None
    if note is not None:
        logger.warning("%s", note)
    kept = previous or {}
    manifest = {
        "tunescope": tunescope.__version__,
        "created": kept.get("created", _now()),
        "updated": _now(),
        "config": config.to_json(),
        "config_digest": config.digest(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "machine": {"platform": platform.platform(), "device": str(resolve_device(config.device))},
        "models": kept.get("models", {}),
        "trained": kept.get("trained", {}),
        "stages": kept.get("stages", {}),
        "notes": [*kept.get("notes", []), *([note] if note else [])],
    }
    runfolder.write_manifest(root, manifest)
    return manifest


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
