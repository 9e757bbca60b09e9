"""Shared options, the loading of a task, data file or tuned model from them, and before/after lines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunescope.errors import InputError

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.data import Task as TaskSpec
    from tunescope.models import Encoder

Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for everything random.")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Fine-tuning precision: fp32, bf16 (bfloat16 autocast, float32 weights and optimiser) or auto "
        "(bf16 where the device computes it natively: CUDA with bf16, a CPU with AVX512-BF16 or AMX). "
        "Every measurement runs in float32.",
    ),
]
Task = Annotated[str | None, typer.Option("--task", "-t", help="Task name (see `tunescope tasks`).")]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Local folder with GLUE-style TSV files for the task.")
]
DataFile = Annotated[
    Path | None, typer.Option("--data", help="Your own CSV/TSV/JSONL file instead of a task (with --text).")
]
TextColumn = Annotated[str | None, typer.Option("--text", help="Column with the text (with --data).")]
PairColumn = Annotated[str | None, typer.Option("--text-pair", help="Column with the second text of a pair.")]
LabelColumn = Annotated[str | None, typer.Option("--label", help="Column with the label (with --data).")]
Split = Annotated[str, typer.Option("--split", help="Split of the task to use.")]
AnalysisLimit = Annotated[int | None, typer.Option("--limit", min=0, help="Examples analysed (0 = all).")]
SentencePooling = Annotated[
    str,
    typer.Option(
        "--pooling",
        help=(
            "Sentence vector per text: mean (average of its non-padding tokens, [CLS]/[SEP] included), "
            "mean_no_special (the same without the special tokens, as Xie et al. 2022) or cls (first token)."
        ),
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")]
Measures = Annotated[
    list[str] | None,
    typer.Option("--measure", "-m", help="linear_cka (default), rbf_cka, svcca, ...; ':debiased' suffix."),
]
Rsa = Annotated[str, typer.Option("--rsa", help="RDM,COMPARE for rsa.csv, or 'none'.")]
Tuned = Annotated[
    str, typer.Argument(help="Fine-tuned sequence classifier: a folder or hub id with its classifier head.")
]
MaxLength = Annotated[int, typer.Option("--max-length", help="Inputs are truncated to this many tokens.")]


def new_output_dir(out: Path | None, option: str = "--out") -> Path:
    """The ``--out`` folder of a command that exports: required, new or empty, and writable.

    ``option`` names the flag in messages (``--export`` for a second output folder).
    """
    from tunescope._io import check_output_dir

    if out is None:
        raise InputError(f"{option} DIR is required: the new folder the results are written to")
    folder = check_output_dir(out, option)
    if folder.is_dir() and any(p for p in folder.iterdir() if not p.name.startswith(".")):
        raise InputError(f"{option} {folder} exists and is not empty; choose a new folder or delete it")
    return folder


def load_examples(
    task: str | None,
    data: Path | None,
    *,
    text: str | None,
    text_pair: str | None,
    label: str | None,
    split: str,
    data_dir: Path | None,
    limit: int | None,
) -> Examples:
    """Examples from a registered task (``--task``) or from the user's own file (``--data --text ...``)."""
    from tunescope.data import get_task, load_file

    if data is not None:
        if task is not None:
            raise InputError("give either --task or --data, not both")
        if text is None:
            raise InputError("--data needs --text COLUMN naming the column that holds the text")
        examples = load_file(data, text=text, text_pair=text_pair, label=label)
        return examples.head(limit) if limit is not None else examples
    return get_task(task or "movie-sentiment").load(split, data_dir=data_dir, limit=limit)


def sentence_pooling(pooling: str) -> str:
    """Check a sentence pooling name (``mean``, ``mean_no_special`` or ``cls``) before anything slow runs."""
    from tunescope.errors import UnknownNameError
    from tunescope.extract import SENTENCE_POOLINGS

    if pooling not in SENTENCE_POOLINGS:
        raise UnknownNameError("sentence pooling", pooling, SENTENCE_POOLINGS)
    return pooling


def layer_list(value: str | None, option: str) -> tuple[int, ...] | None:
    """A layer-set option (``"1-3,5"``, ``"4,5,6"``, ``"none"`` -> ()); ``None`` stays ``None``."""
    from tunescope.locations import parse_layers

    return parse_layers(value, option=option)


def name_list(value: str | None) -> tuple[str, ...] | None:
    """``"a, b"`` -> ("a", "b"); ``None`` stays ``None``; ``"none"`` -> ()."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ()
    return tuple(x.strip() for x in value.split(",") if x.strip())


def get_task(name: str | None) -> TaskSpec | None:
    """The registered task called ``name`` (``None`` stays ``None``)."""
    if name is None:
        return None
    from tunescope.data import get_task as lookup

    return lookup(name)


def task_examples(task: TaskSpec, split: str, data_dir: Path | None, limit: int | None) -> Examples:
    """The examples of one split (``limit`` 0 or ``None``: all)."""
    return task.load(split, data_dir=data_dir, limit=limit or None)


def load_tuned(tuned: str, device: Any, command: str) -> Encoder:
    """Load a fine-tuned sequence classifier; refuse a checkpoint without its trained head."""
    from tunescope.models import load_trained_classifier

    return load_trained_classifier(tuned, device=device, purpose=command)


def before_after(what: str, before: int, after: int) -> str:
    """``parameters: 1,000 -> 800 (-20.0%)``."""
    change = 100 * (after - before) / before if before else 0.0
    return f"{what}: {before:,} -> {after:,} ({change:+.1f}%)"


def metric_line(task: TaskSpec, split: str, examples: Examples, before: float, after: float) -> str:
    """``accuracy on movie-sentiment validation (40 examples): 0.5250 -> 0.5000 (-2.5 points)``."""
    return (
        f"{task.metric} on {task.name} {split} ({len(examples)} examples): {before:.4f} -> {after:.4f} "
        f"({100 * (after - before):+.1f} points)"
    )


def check_task_head(encoder: Encoder, task: TaskSpec, fix: str) -> None:
    """Refuse, before any scoring, a classifier head that cannot score ``task``'s labels."""
    from tunescope.inference import check_head

    config: Any = encoder.model.config
    regression = task.label_kind == "regression"
    check_head(
        int(config.num_labels),
        getattr(config, "problem_type", None),
        regression=regression,
        n_classes=None if regression else task.num_labels,
        what=encoder.name,
        fix=fix,
    )


def check_head_fraction(fraction: float, n_layers: int, n_heads: int, option: str) -> None:
    """Refuse, before any scoring, a head-pruning fraction that removes no head or empties a layer.

    The count is the one :func:`tunescope.heads.least_important` removes (``round(fraction * L * H)``,
    at least one head kept per layer), found by a dry run on equal scores.
    """
    import math

    import torch

    from tunescope.heads import least_important

    total = n_layers * n_heads
    if not 0 <= fraction < 1:
        raise InputError(f"{option} {fraction} must be in [0, 1); e.g. 0.3 removes 30% of the heads")
    try:
        chosen = least_important(torch.zeros(n_layers, n_heads), fraction)
    except InputError:
        limit = total - n_layers
        most = math.floor(100 * limit / total) / 100
        raise InputError(
            f"{option} {fraction} would remove {round(fraction * total)} of {total} heads, but every layer "
            f"keeps at least one; remove at most {limit} ({option} {most} or less)"
        ) from None
    if not chosen:
        raise InputError(
            f"{option} {fraction} removes none of the {total} heads; pass a larger fraction "
            f"(at least {1 / total:.3f} removes one)"
        )
