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

Intervals: each linear-CKA value has a percentile-bootstrap interval over the examples of its domain
(``ci_low``, ``ci_high``, ``n_boot``; ``AnalyzeConfig.n_boot`` resamples at ``AnalyzeConfig.confidence``),
from Gram matrices of the representations already extracted (`tunescope.similarity.bootstrap_linear_cka`
with ``exact=None, centered=True``): no model runs again. Up to 400 examples per domain the resamples are
exact (they equal `tunescope.similarity.bootstrap_ci`'s before centering); above, the linear bootstrap,
whose dropped terms are ``O(1/n)`` and which costs ``n_boot`` times less. The exact resamples are centred
on the estimate (bias-corrected percentile): a resample's repeated examples raise biased CKA, at
n = 1000 and d = 384 by more than the interval is wide.
The domains are different examples, so each is resampled on its own: the domain at position ``k`` (the
in-domain set first, then ``ood_tasks`` in order) draws with seed ``AnalyzeConfig.seed + k``. RSA rows have
empty interval cells: a resample repeats examples, whose zero dissimilarities bias RSA unless those pairs
are dropped (Schuett et al. 2023), and each resample would rank all ``n (n - 1) / 2`` dissimilarities
again (``n_boot`` times per layer and domain), far from cheap.

``domain_change.csv`` states the comparison: per layer and measure, the change ``1 - value`` in domain
(``in_change``), out of domain (``out_change``; ``out_domain`` names the task, or ``mean`` for the mean
over the out-of-domain tasks when there are several) and their ``difference = in_change - out_change``
(above 0: in-domain inputs changed more), with the percentile interval of that difference over the
independent resamples of the domains involved (empty for RSA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunescope.errors import InputError
from tunescope.options import option
from tunescope.pipeline import RunContext, Stage, Table

if TYPE_CHECKING:
    from torch import Tensor

    from tunescope.data import Examples, Task
    from tunescope.extract import Representations

__all__ = ["CHANGE_COLUMNS", "COLUMNS", "MEAN", "default_ood_tasks", "ood_tasks", "rsa_measure"]

COLUMNS = ("domain", "in_domain", "layer", "measure", "value", "ci_low", "ci_high", "n_boot", "n_examples")
CHANGE_COLUMNS = (
    "out_domain",
    "layer",
    "measure",
    "in_change",
    "out_change",
    "difference",
    "ci_low",
    "ci_high",
    "n_boot",
)
#: ``out_domain`` of the rows comparing the in-domain change with the mean over the out-of-domain tasks
MEAN = "mean"
#: the measure with bootstrap intervals (from Gram matrices; see the module docstring)
BOOT_MEASURE = "linear_cka"


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
    rows, samples = _rows(ctx, reps, own, constant, n)
    change = _change_rows(rows, samples, ctx.config.confidence)
    return [Table("domains", COLUMNS, rows), Table("domain_change", CHANGE_COLUMNS, change)]


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
) -> tuple[list[dict[str, Any]], dict[tuple[str, int, str], Tensor]]:
    """One row per (domain, layer, measure): the two models' same-layer similarity on that domain.

    Returns:
        The rows, and (domain, layer, measure) -> (n_boot,) resampled values of each bootstrapped row.
    """
    from tunescope.similarity import linear_cka, percentile_interval, rsa

    config = ctx.config
    base, tuned = ctx.model_names()
    rsa_pair = config.options_for("similarity").rsa
    rows: list[dict[str, Any]] = []
    resampled: dict[tuple[str, int, str], Tensor] = {}
    for k, (domain, pair) in enumerate(reps.items()):
        a, b = pair[base], pair[tuned]
        layers = [x for x in a.layers if x not in constant]
        samples = _bootstrap(a, b, layers, n_boot=config.n_boot, seed=config.seed + k)
        for i, layer in enumerate(layers):
            low, high = percentile_interval(samples[:, i], config.confidence)
            values: dict[str, dict[str, Any]] = {
                BOOT_MEASURE: {
                    "value": float(linear_cka(a[layer], b[layer])),
                    "ci_low": low,
                    "ci_high": high,
                    "n_boot": config.n_boot,
                }
            }
            resampled[(domain, layer, BOOT_MEASURE)] = samples[:, i]
            if rsa_pair is not None:
                rdm, compare = rsa_pair
                value = rsa(a[layer], b[layer], rdm=rdm, compare=compare)
                values[rsa_measure(rdm, compare)] = {"value": float(value), "ci_low": None, "ci_high": None}
            rows += [
                {
                    "domain": domain,
                    "in_domain": domain == own,
                    "layer": layer,
                    "measure": measure,
                    "n_boot": None,
                    **cells,
                    "n_examples": n,
                }
                for measure, cells in values.items()
            ]
    return rows, resampled


def _bootstrap(
    a: Representations, b: Representations, layers: list[int], *, n_boot: int, seed: int
) -> Tensor:
    """(n_boot, len(layers)) same-layer linear CKA of ``a`` and ``b`` on resamples of their examples."""
    from tunescope.similarity import bootstrap_linear_cka

    features = [a[layer] for layer in layers] + [b[layer] for layer in layers]
    pairs = [(i, i + len(layers)) for i in range(len(layers))]
    _, samples = bootstrap_linear_cka(features, pairs, n_boot=n_boot, seed=seed, exact=None, centered=True)
    return samples


def _change_rows(
    rows: list[dict[str, Any]], samples: dict[tuple[str, int, str], Tensor], level: float
) -> list[dict[str, Any]]:
    """In-domain change minus out-of-domain change (``1 - value``) per layer and measure, with intervals.

    The domains were resampled independently (:func:`_rows`), so the resampled difference is the
    in-domain resample's change minus the out-of-domain resample's (or the mean of the out-of-domain
    tasks' resamples) and its percentile interval the difference's interval.
    """
    from tunescope.similarity import percentile_interval

    inside = {(r["layer"], r["measure"]): r for r in rows if r["in_domain"]}
    outside: dict[str, dict[tuple[int, str], dict[str, Any]]] = {}
    for r in rows:
        if not r["in_domain"]:
            outside.setdefault(r["domain"], {})[(r["layer"], r["measure"])] = r
    groups = {name: [name] for name in outside}
    if len(outside) > 1:
        groups[MEAN] = list(outside)
    out: list[dict[str, Any]] = []
    for label, names in groups.items():
        for key, own in inside.items():
            others = [outside[name][key] for name in names]
            in_change = 1 - own["value"]
            out_change = sum(1 - r["value"] for r in others) / len(others)
            row = {
                "out_domain": label,
                "layer": key[0],
                "measure": key[1],
                "in_change": in_change,
                "out_change": out_change,
                "difference": in_change - out_change,
                "ci_low": None,
                "ci_high": None,
                "n_boot": None,
            }
            key_in = (own["domain"], *key)
            if key_in in samples:  # (1 - s_in) - mean(1 - s_out) = mean(s_out) - s_in
                mean_out = sum(samples[(r["domain"], *key)] for r in others) / len(others)
                row["ci_low"], row["ci_high"] = percentile_interval(mean_out - samples[key_in], level)
                row["n_boot"] = own["n_boot"]
            out.append(row)
    return out


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
