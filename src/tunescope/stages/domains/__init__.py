"""Stage ``domains``: does fine-tuning change in-domain inputs more than out-of-domain ones?

Merchant et al. (2020) compared each layer of the pre-trained and the fine-tuned model on inputs from
the fine-tuning task's domain and on inputs from other domains: the representations of in-domain inputs
changed more (lower same-layer similarity). This stage does the same with the same-layer linear CKA
(Kornblith et al. 2019) and, when ``AnalyzeConfig.rsa`` is set, RSA (Kriegeskorte et al. 2008) between
the two models, on the run's analysis split (in domain) and on the same split of each out-of-domain task.

Out-of-domain tasks: ``--domains.ood-tasks``, or by default :func:`default_ood_tasks`: for a builtin
VADER sentiment task the other three VADER domains (``movie-sentiment`` -> ``amazon-sentiment``,
``nyt-sentiment``, ``tweet-sentiment``; same rating scale and labels), for any other task none. Every
input set is cut to the same number of examples (the smallest set's size, at most ``limit``), so the
numbers are comparable; layers that give one vector for every input of some set (layer 0 under ``cls``
pooling) are left out of every set. Writes ``domains.csv``: one row per (domain, layer, measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunescope.errors import InputError
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table

if TYPE_CHECKING:
    from tunescope.data import Examples, Task
    from tunescope.extract import Representations

__all__ = ["COLUMNS", "default_ood_tasks", "ood_tasks", "rsa_measure"]

COLUMNS = ("domain", "in_domain", "layer", "measure", "value", "n_examples")


def default_ood_tasks(task: str) -> tuple[str, ...]:
    """The out-of-domain tasks of ``task``: the other builtin VADER sentiment domains, else none.

    Example:
        >>> default_ood_tasks("movie-sentiment")
        ('amazon-sentiment', 'nyt-sentiment', 'tweet-sentiment')
        >>> default_ood_tasks("sst2")
        ()
    """
    from tunescope.data import TASKS, get_task
    from tunescope.data.builtin_tasks import VaderSource

    own = get_task(task)
    if not isinstance(own.source, VaderSource):
        return ()
    return tuple(name for name, t in TASKS.items() if isinstance(t.source, VaderSource) and name != own.name)


def ood_tasks(task: str, given: Sequence[str] | None) -> tuple[str, ...]:
    """The checked out-of-domain task names: ``given``, or :func:`default_ood_tasks` when None.

    Raises:
        UnknownNameError: a name that is not a registered task.
        InputError: the analysed task itself is among them.
    """
    from tunescope.data import get_task

    if given is None:
        return default_ood_tasks(task)
    own = get_task(task).name
    names = tuple(dict.fromkeys(get_task(name).name for name in given))
    if own in names:
        raise InputError(f"--domains.ood-tasks lists {own}, the analysed task itself; give only other tasks")
    return names


def _task_list(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ("a", "b"); ``"none"`` -> () (no out-of-domain set)."""
    if text.strip().lower() in ("none", ""):
        return ()
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class DomainsOptions:
    """Options of the ``domains`` stage (its RSA is the ``similarity`` stage's ``rsa``)."""

    ood_tasks: tuple[str, ...] | None = option(
        None,
        help="Out-of-domain tasks (comma list, or none); default: the task's own (the other VADER domains).",
        parse=_task_list,
        metavar="T1,T2",
        aliases=("--ood-tasks",),
    )


def rsa_measure(rdm: str, compare: str) -> str:
    """The ``measure`` value of RSA rows in ``domains.csv``: ``rsa_<rdm>_<compare>``."""
    return f"rsa_{rdm}_{compare}"


def run(ctx: RunContext) -> list[Table]:
    """Same-layer similarity of the two models on in-domain and out-of-domain inputs, per layer."""
    config = ctx.config
    given = config.options_for("domains").ood_tasks
    names = ood_tasks(config.task, given)  # unknown names fail here, before any work
    models = ctx.model_names()
    if len(models) < 2:
        ctx.note("domains: needs a fine-tuned model (--tuned DIR, or let the run fine-tune), so skipped.")
        return []
    if not names:
        why = "--domains.ood-tasks none" if given is not None else f"{config.task} has no default"
        ctx.note(
            f"domains: no out-of-domain tasks ({why}; pass --domains.ood-tasks T1,T2), so no in- vs "
            "out-of-domain comparison."
        )
        return []
    from tunescope.data import get_task

    own = ctx.task.name
    in_domain = ctx.examples()
    outside = {name: _load(ctx, get_task(name)) for name in names}
    n = min(len(in_domain), *(len(ex) for ex in outside.values()))
    if config.limit is not None:
        n = min(n, config.limit)
    if n < len(in_domain) or any(len(ex) > n for ex in outside.values()):
        ctx.note(f"domains: every input set cut to its first {n} examples (the smallest set's size).")
    reps: dict[str, dict[str, Representations]] = {own: {}, **{name: {} for name in outside}}
    for model in models:
        reps[own][model] = _first(ctx.representations(model, drop_constant=False), n)
        for name, examples in outside.items():
            reps[name][model] = _extract(ctx, model, examples.head(n))
    constant = {layer for pair in reps.values() for r in pair.values() for layer in r.constant_layers()}
    if constant:
        ctx.note(
            f"domains: layer(s) {', '.join(map(str, sorted(constant)))} give the same vector for every "
            f"input under {config.pooling} pooling, so they are left out."
        )
    return [Table("domains", COLUMNS, _rows(ctx, reps, own, constant, n))]


def _load(ctx: RunContext, task: Task) -> Examples:
    """The analysis split of an out-of-domain task (its first split of that name), up to ``limit``."""
    split = ctx.config.split
    if split not in task.splits:
        split = next((s for s in task.splits if s.startswith(split)), split)  # validation_matched, ...
    return task.load(split, data_dir=ctx.config.data_dir, limit=ctx.config.limit)


def _first(reps: Representations, n: int) -> Representations:
    if reps.n_rows == n:
        return reps
    from tunescope.extract import Representations

    labels = None if reps.labels is None else reps.labels[:n]
    return Representations({k: v[:n] for k, v in reps.tensors.items()}, reps.pooling, labels, meta=reps.meta)


def _extract(ctx: RunContext, model: str, examples: Examples) -> Representations:
    """Pooled like the run's own representations (same pooling, length and cache)."""
    from tunescope.extract import extract

    return extract(
        ctx.encoder(model),
        examples,
        pooling=ctx.config.pooling,
        batch_size=ctx.config.batch_size,
        max_length=ctx.config.max_length,
        cache_dir=ctx.cache_dir,
        progress=ctx.progress,
    )


def _rows(
    ctx: RunContext,
    reps: dict[str, dict[str, Representations]],
    own: str,
    constant: set[int],
    n: int,
) -> list[dict[str, Any]]:
    """One row per (domain, layer, measure): the two models' same-layer similarity on that domain."""
    from tunescope.similarity import linear_cka, rsa

    base, tuned = ctx.model_names()
    rows: list[dict[str, Any]] = []
    for domain, pair in reps.items():
        a, b = pair[base], pair[tuned]
        for layer in (x for x in a.layers if x not in constant):
            values = {"linear_cka": linear_cka(a[layer], b[layer])}
            rsa_pair = ctx.config.options_for("similarity").rsa
            if rsa_pair is not None:
                rdm, compare = rsa_pair
                values[rsa_measure(rdm, compare)] = rsa(a[layer], b[layer], rdm=rdm, compare=compare)
            rows += [
                {
                    "domain": domain,
                    "in_domain": domain == own,
                    "layer": layer,
                    "measure": measure,
                    "value": float(value),
                    "n_examples": n,
                }
                for measure, value in values.items()
            ]
    return rows


def check(ctx: RunContext) -> None:
    """Out-of-domain task names, before anything runs."""
    ood_tasks(ctx.config.task, ctx.config.options_for("domains").ood_tasks)


def _min_examples(config: Any) -> int:
    """RSA needs 2 dissimilarities at least (3 examples); CKA 2 examples."""
    return 3 if config.options_for("similarity").rsa is not None else 2


STAGE = Stage(
    pooled=True,
    check=check,
    options=DomainsOptions,
    min_examples=_min_examples,
    name="domains",
    title="In-domain vs out-of-domain change",
    run=run,
    description=(
        "How similar each layer of the fine-tuned model stays to the same layer of the pre-trained "
        "model (linear CKA, RSA), on the task's own inputs and on inputs from other domains; Merchant "
        "et al. (2020) found fine-tuning changes in-domain inputs more."
    ),
    after=("selection",),
)
