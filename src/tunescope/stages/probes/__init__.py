"""Stage ``probes``: token-level linear probes on every layer of both models, with control tasks.

Merchant et al. (2020, "What Happens To BERT Embeddings During Fine-tuning?") found that fine-tuning
does not make an encoder forget linguistic structure: a linear probe still reads part of speech and
dependency labels from the tuned model's layers almost as well as from the pre-trained model's. This
stage measures that for the run's models.

Labels, one set per name in ``AnalyzeConfig.probe_tasks``:

* silver (default): spaCy's ``pos`` (UPOS), ``tag`` (Penn Treebank) or ``dep`` (dependency label) of the
  words of the run's analysis texts, every label set from one spaCy pass and cached in ``RUN/cache/silver``
  (:func:`tunescope.data.silver.silver_tag_sets`), so a rerun does not tag again;
* gold, with ``AnalyzeConfig.conllu``: the ``upos``, ``xpos`` or ``deprel`` column of a CoNLL-U file
  (:func:`tunescope.data.conllu.load_conllu`); ``pos``, ``tag`` and ``dep`` then mean those columns.

Sentences are split by the run's seed into train and test (:func:`split_sentences`: whole sentences on
one side, at most :data:`MAX_TRAIN_WORDS` and :data:`MAX_TEST_WORDS` words), every layer is probed as
:func:`tunescope.probing.fit_probes` does (regularisation chosen on held-out training sentences, a control
task per word type; Hewitt & Liang 2019), and ``probes.csv`` gets one row per (model, layer, label set).
All the probes, of every model, label set and control, are fitted in one optimisation
(:func:`tunescope.probing.fit_probe_tasks`); label sets of the same words share one extraction per model
and every pass over its features.

Every accuracy, control accuracy and selectivity comes with a percentile bootstrap interval over the test
sentences (``ci_low``/``ci_high``, ``control_ci_*``, ``selectivity_ci_*``; ``--n-boot`` resamples at
``--confidence``), from the probes' stored test predictions: nothing is refitted. The tuned model's rows
also carry ``delta = accuracy(tuned) - accuracy(base)`` at the same layer with its paired interval
(``delta_ci_low``/``delta_ci_high``: both models' probes scored on the same resampled sentences).

Without spaCy (or its English model) and without ``--conllu``, a note says how to install it and the
stage probes the task's own labels at sentence level instead (control: a permutation of the labels), so
the section still shows something.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from tunescope.data.tokens import MAX_TEST_WORDS, MAX_TRAIN_WORDS, split_sentences
from tunescope.errors import DataError, InputError, MissingExtraError, UnknownNameError
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table

if TYPE_CHECKING:
    from tunescope.data.tokens import TokenExamples
    from tunescope.extract import Representations
    from tunescope.probing import ProbeResult, ProbeTask

K = TypeVar("K")

__all__ = [
    "COLUMNS",
    "MAX_TEST_WORDS",
    "MAX_TRAIN_WORDS",
    "SILVER_TO_GOLD",
    "resolve_probe_tasks",
    "split_sentences",
]

COLUMNS = (
    "model",
    "layer",
    "probe_task",
    "accuracy",
    "ci_low",
    "ci_high",
    "control_accuracy",
    "control_ci_low",
    "control_ci_high",
    "selectivity",
    "selectivity_ci_low",
    "selectivity_ci_high",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "n_boot",
    "majority_accuracy",
    "silver",
    "n_train",
    "n_test",
)
#: what a silver name means when a CoNLL-U file gives gold labels
SILVER_TO_GOLD: dict[str, str] = {"pos": "upos", "tag": "xpos", "dep": "deprel"}
SPACY_FIX = "`pip install 'tunescope[spacy]'`"


def resolve_probe_tasks(names: Sequence[str], conllu: str | Path | None) -> tuple[str, ...]:
    """The label sets the stage computes, checked before anything slow runs.

    Without ``conllu`` the names must be silver fields (``pos``, ``tag``, ``dep``). With it, gold columns
    (``upos``, ``xpos``, ``deprel``) are used, and a silver name means its gold counterpart
    (:data:`SILVER_TO_GOLD`). Duplicates are dropped, order kept.

    Raises:
        UnknownNameError: a name that is neither.
        InputError: a gold name without ``conllu``.
        DataError: ``conllu`` is not a file.

    Example:
        >>> resolve_probe_tasks(["pos", "dep"], None)
        ('pos', 'dep')
        >>> resolve_probe_tasks(["pos", "upos", "dep"], __file__)
        ('upos', 'deprel')
    """
    from tunescope.data.conllu import CONLLU_FIELDS
    from tunescope.data.silver import SILVER_FIELDS

    valid = [*SILVER_FIELDS, *CONLLU_FIELDS]
    resolved: list[str] = []
    for name in names:
        if name not in valid:
            raise UnknownNameError(
                "probe task", name, valid, hint="pos, tag, dep: silver spaCy labels; the others need --conllu"
            )
        if conllu is None and name in CONLLU_FIELDS:
            raise InputError(
                f"probe task {name!r} reads gold labels from a treebank: pass --conllu FILE, or use "
                "pos, tag or dep (silver spaCy labels of the task's texts)"
            )
        field = SILVER_TO_GOLD.get(name, name) if conllu is not None else name
        if field not in resolved:
            resolved.append(field)
    if conllu is not None and not Path(conllu).is_file():
        raise DataError(f"CoNLL-U file {conllu} does not exist; pass the path of a .conllu file to --conllu")
    return tuple(resolved)


def _names(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("none", ""):
        return ()
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class ProbesOptions:
    """Options of the ``probes`` stage: which token label sets, silver (spaCy) or gold (CoNLL-U)."""

    tasks: tuple[str, ...] = option(
        ("pos", "dep"),
        help="Token probes: pos,tag,dep (silver spaCy labels) or, with a treebank, upos,xpos,deprel; none.",
        parse=_names,
        metavar="T1,T2",
        aliases=("--probe-tasks",),
    )
    conllu: str | None = option(
        None, help="CoNLL-U treebank whose gold labels the probes use.", metavar="FILE", aliases=("--conllu",)
    )

    def __post_init__(self) -> None:
        resolve_probe_tasks(self.tasks, self.conllu)


@dataclass(frozen=True)
class _LabelSet:
    """One probe task's sentences: ``name`` is the ``probe_task`` value, ``examples`` the tagged words."""

    name: str
    examples: TokenExamples
    silver: bool


def run(ctx: RunContext) -> list[Table]:
    """One row per (model, layer, probe task): test accuracy, control accuracy, selectivity."""
    config = ctx.config
    opts: ProbesOptions = config.options_for("probes")
    if not opts.tasks:
        ctx.note("probes: no probe tasks asked for (--probes.tasks none), so no probes.")
        return []
    fields = resolve_probe_tasks(opts.tasks, opts.conllu)
    try:
        label_sets = _label_sets(ctx, fields)
    except MissingExtraError:
        if opts.conllu is not None:  # the conllu package: asked for explicitly, so its error stands
            raise
        return _sentence_fallback(ctx, fields)
    from tunescope.probing import ProbeTask

    tasks: dict[tuple[str, str], ProbeTask] = {}
    reps_memo: dict[tuple[str, str], Representations] = {}
    for label_set in label_sets:
        examples = label_set.examples
        train_ids, test_ids = split_sentences([len(w) for w in examples.words], seed=config.seed)
        train, test = examples.subset(train_ids.tolist()), examples.subset(test_ids.tolist())
        _note_cap(ctx, examples, train, test)
        for model in ctx.model_names():
            (train_reps, train_labels, train_words), (test_reps, test_labels, test_words) = (
                _labelled(ctx, model, part, reps_memo) for part in (train, test)
            )
            tasks[label_set.name, model] = ProbeTask(
                train_reps, train_labels, test_reps, test_labels, word_types=(train_words, test_words)
            )
    results = _probe(ctx, tasks)  # every model, label set and control in one optimisation
    rows: list[dict[str, Any]] = []
    for label_set in label_sets:
        by_model = {model: results[label_set.name, model] for model in ctx.model_names()}
        rows += _rows(ctx, by_model, label_set.name, label_set.silver)
    return [Table("probes", COLUMNS, rows)]


def _rows(ctx: RunContext, results: dict[str, ProbeResult], task: str, silver: bool) -> list[dict[str, Any]]:
    """``probes.csv`` rows of one label set: each model's layers with their intervals, and for the
    second model the paired difference from the first at each layer (``delta``, Merchant et al.)."""
    config = ctx.config
    options: dict[str, Any] = {"n_boot": config.n_boot, "level": config.confidence, "seed": config.seed}
    rows: list[dict[str, Any]] = []
    names = list(results)
    for model, result in results.items():
        reference = results[names[0]] if model != names[0] else None
        comparable = reference is not None and reference.same_rows(result)
        if reference is not None and not comparable:
            ctx.note(
                f"probes: {names[0]} and {model} were tested on different words for {task} (their "
                "tokenizers cut the sentences differently), so their accuracies are not compared pairwise."
            )
        for row in result.rows(**options):
            layer = row["layer"]
            delta = {"delta": math.nan, "delta_ci_low": math.nan, "delta_ci_high": math.nan}
            if comparable and reference is not None and layer in reference.predictions:
                diff = reference.difference(result, layer, **options)
                delta = {"delta": diff.value, "delta_ci_low": diff.low, "delta_ci_high": diff.high}
            rows.append({**row, **delta, "model": model, "probe_task": task, "silver": silver})
    return rows


def _label_sets(ctx: RunContext, fields: tuple[str, ...]) -> list[_LabelSet]:
    """Gold sentences of the CoNLL-U file, or the analysis texts tagged by spaCy (MissingExtraError)."""
    config = ctx.config
    conllu = config.options_for("probes").conllu
    if conllu is not None:
        from tunescope.data.conllu import load_conllu

        return [_LabelSet(f, load_conllu(conllu, field=f, split="file"), False) for f in fields]
    from tunescope.data.silver import silver_tag_sets

    texts = _texts_to_tag(ctx.examples().texts)
    tagged = silver_tag_sets(texts, fields, split=config.split, cache_dir=ctx.cache_dir)  # one spaCy pass
    return [_LabelSet(f, tagged[f], True) for f in fields]


def _texts_to_tag(texts: list[str]) -> list[str]:
    """The first texts whose whitespace words total about twice the word budget: tagging more is waste."""
    budget = 2 * (MAX_TRAIN_WORDS + MAX_TEST_WORDS)
    totals = np.cumsum([len(t.split()) for t in texts])
    return texts[: max(2, int(np.searchsorted(totals, budget, side="right")))]


def _note_cap(ctx: RunContext, examples: TokenExamples, train: TokenExamples, test: TokenExamples) -> None:
    if train.n_words + test.n_words < examples.n_words:
        ctx.note(
            f"probes: {train.n_words} training and {test.n_words} test words of {examples.n_words} (at most "
            f"{MAX_TRAIN_WORDS} and {MAX_TEST_WORDS}), to keep the probes fast."
        )


def _labelled(
    ctx: RunContext,
    model: str,
    part: TokenExamples,
    memo: dict[tuple[str, str], Representations],
) -> tuple[Representations, np.ndarray, list[str]]:
    """Token representations of ``part``, the tag name of each of their rows, and the word of each row.

    Label sets with the same words (silver ``pos`` and ``dep`` of the same texts) share one extraction,
    the same Representations object, so their probes share its features (:class:`ProbeTask`).
    """
    from tunescope.extract import extract

    key = (model, hashlib.sha256(json.dumps(part.words, ensure_ascii=False).encode()).hexdigest())
    if key not in memo:
        memo[key] = extract(
            ctx.encoder(model),
            part.texts,
            pooling="tokens",
            words=part.words,
            batch_size=ctx.config.batch_size,
            max_length=ctx.config.max_length,
            cache_dir=ctx.cache_dir,
            progress=ctx.progress,
        )
    reps = memo[key]
    assert reps.example_index is not None and reps.word_index is not None  # tokens pooling sets both
    pairs = list(zip(reps.example_index.tolist(), reps.word_index.tolist(), strict=True))
    names = part.tag_names
    labels = np.asarray([names[part.tags[e][w]] for e, w in pairs])
    words = [part.words[e][w] for e, w in pairs]
    return reps, labels, words


def _probe(ctx: RunContext, tasks: Mapping[K, ProbeTask]) -> dict[K, ProbeResult]:
    """:func:`tunescope.probing.fit_probe_tasks` of ``tasks`` on the run's device, with the run's seed."""
    from tunescope.probing import fit_probe_tasks

    return fit_probe_tasks(tasks, device=ctx.device, seed=ctx.config.seed)


def _sentence_fallback(ctx: RunContext, fields: tuple[str, ...]) -> list[Table]:
    """No spaCy: probe the task's own labels on the pooled representations, per-example control."""
    task = ctx.task
    wanted = ", ".join(fields)
    if task.label_kind != "classification":
        ctx.note(
            f"probes: silver {wanted} labels need spaCy and its English model ({SPACY_FIX}), or give gold "
            f"labels with --conllu FILE; {task.name} has no class labels to probe instead, so no probes."
        )
        return []
    ctx.note(
        f"probes: silver {wanted} labels need spaCy and its English model, which are not installed: install "
        f"them with {SPACY_FIX}, or give gold labels with --conllu FILE. Shown instead: a sentence-level "
        f"probe of the {task.name} labels ({ctx.config.pooling} pooling), with a per-example control task."
    )
    examples = ctx.examples()
    if examples.labels is None:
        raise DataError(f"the {examples.split} split of {task.name} has no labels to probe; pass --split")
    names = np.asarray(task.label_names or ())
    labels = names[examples.labels] if len(names) else examples.labels
    from tunescope.probing import ProbeTask

    train_ids, test_ids = split_sentences([1] * len(examples), seed=ctx.config.seed)
    tasks: dict[str, ProbeTask] = {}
    for model in ctx.model_names():
        reps = ctx.representations(model)
        sides = [
            {layer: reps[layer][torch.from_numpy(ids)] for layer in reps.layers}
            for ids in (train_ids, test_ids)
        ]
        tasks[model] = ProbeTask(sides[0], labels[train_ids], sides[1], labels[test_ids])
    return [Table("probes", COLUMNS, _rows(ctx, _probe(ctx, tasks), task.name, False))]


def check(ctx: RunContext) -> None:
    """Probe names and the CoNLL-U file, before anything runs."""
    opts = ctx.config.options_for("probes")
    resolve_probe_tasks(opts.tasks, opts.conllu)


STAGE = Stage(
    check=check,
    options=ProbesOptions,
    min_examples=3,  # a train, a validation and a test sentence
    name="probes",
    title="Probing classifiers: linguistic information kept",
    run=run,
    description=(
        "A linear probe per layer predicts each word's part of speech or dependency label (silver "
        "spaCy labels, or gold ones from a CoNLL-U file), against a control task that gives each word "
        "type a random label (Hewitt & Liang 2019); selectivity = accuracy - control accuracy. "
        "Merchant et al. (2020) found fine-tuning keeps this information."
    ),
    after=("ffn",),
)
