"""Fine-tuning seeds: one stage's tables from several seeds, merged, and each finding's spread across them.

Fine-tuning the same model on the same data with another seed (head initialisation, dropout, data
order) moves the downstream findings by as much as the differences they report (Dodge et al. 2020;
Mosbach et al. 2021), and no bootstrap over evaluation examples sees that variance. A stage declared
``Stage(seeded=True)`` runs once per seed of ``--seeds`` (:meth:`tunescope.pipeline.RunContext.for_seed`);
:func:`combine` merges its tables, with a ``seed`` column first, and for every table that names its
row ``key`` adds ``<table>_seeds``: per row and per measured column (``value``, ``delta``), the mean
over seeds, the sample standard deviation and the Student-t interval of the mean
(:func:`tunescope.intervals.seed_summary`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunescope.pipeline import Table

__all__ = ["MEASURED", "SEED_COLUMNS", "combine", "stack"]

MEASURED = ("value", "delta")
"""The columns whose spread across seeds is summarised (those a table has)."""

SEED_COLUMNS = ("column", "mean", "std", "ci_low", "ci_high", "n_seeds", "seeds")
"""The columns of a ``<table>_seeds`` table after its key columns."""


def combine(per_seed: Sequence[tuple[int, Sequence[Table]]], *, level: float = 0.95) -> list[Table]:
    """Merge one stage's tables from several seeds and summarise each keyed row across the seeds.

    Args:
        per_seed: ``(seed, tables)`` for each seed, in the order the seeds were given.
        level: Coverage of the intervals across seeds.

    Returns:
        Each table once, its rows from every seed with ``seed`` as the first column; then, for tables
        with a ``key`` and more than one seed, ``<name>_seeds`` (key columns, then :data:`SEED_COLUMNS`).

    Example:
        >>> from tunescope.pipeline import Table
        >>> one = [Table("t", ("k", "value"), [{"k": "a", "value": 0.8}], key=("k",))]
        >>> two = [Table("t", ("k", "value"), [{"k": "a", "value": 0.9}], key=("k",))]
        >>> merged, spread = combine([(0, one), (1, two)])
        >>> [r["seed"] for r in merged.rows], round(spread.rows[0]["mean"], 3), spread.rows[0]["n_seeds"]
        ([0, 1], 0.85, 2)
    """
    merged = stack("seed", per_seed)
    if len(per_seed) > 1:
        merged += [_spread(t, level) for t in list(merged) if t.key]
    return merged


def stack(column: str, parts: Sequence[tuple[Any, Sequence[Table]]]) -> list[Table]:
    """Each table once, the rows of every part with ``column`` (the part's value) as the first column.

    Also serves the sentence poolings of a pooled stage (``column="pooling"``).
    """
    from tunescope.pipeline import Table

    merged: dict[str, Table] = {}
    for value, tables in parts:
        for table in tables:
            rows = [{column: value, **row} for row in table.rows]
            if table.name not in merged:
                columns = (column, *[c for c in table.columns if c != column])
                merged[table.name] = Table(table.name, columns, rows, key=table.key)
            else:
                merged[table.name].rows.extend(rows)
    return list(merged.values())


def _spread(table: Table, level: float) -> Table:
    """``<name>_seeds``: the mean, spread and t-interval over seeds of each keyed row's measures."""
    from tunescope.intervals import seed_summary
    from tunescope.pipeline import Table

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in table.rows:
        groups.setdefault(tuple(row.get(k) for k in table.key), []).append(row)
    rows = []
    for key, members in groups.items():
        for column in MEASURED:
            if column not in table.columns:
                continue
            values = [_number(r.get(column)) for r in members]
            summary = seed_summary(values, level=level)
            rows.append(
                {
                    **dict(zip(table.key, key, strict=True)),
                    "column": column,
                    "mean": summary.mean,
                    "std": summary.std,
                    "ci_low": summary.low,
                    "ci_high": summary.high,
                    "n_seeds": summary.n,
                    "seeds": ",".join(str(r["seed"]) for r in members),
                }
            )
    return Table(f"{table.name}_seeds", (*table.key, *SEED_COLUMNS), rows)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
