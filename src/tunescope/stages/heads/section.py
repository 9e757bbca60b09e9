"""Report section of the ``heads`` stage: importance maps, pruning curves, MLM vs task, before vs after.

Every sentence states rows the stage wrote (``head_pruning_summary``, ``head_coherence``, ``head_speed``,
``head_transfer``); the section only words and draws them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunescope.report._section import Section
from tunescope.report.claims import difference, interval_text, verdict
from tunescope.report.figures import plot_head_importance, plot_layer_curves

CHIANG = (
    "Chiang & Chen (2021) find that the heads that matter for the pre-training task are not those that "
    "matter for the downstream task"
)


def _pruning_sentence(summary: list[dict[str, str]]) -> str:
    by = {row["rank_by"]: row for row in summary}
    task = by.get("task")
    if task is None:
        return ""
    metric, loss = task["metric"], float(task["max_loss"])

    def amount(row: dict[str, str]) -> str:
        return f"{row['heads_prunable']} heads ({100 * float(row['fraction_prunable']):.0f}%)"

    text = (
        f"Masked in order of task importance, {amount(task)} of the fine-tuned model can go for at most "
        f"{loss:g} point(s) of {metric} ({float(task['value_at']):.3f} vs {float(task['full_value']):.3f}; "
        f"the change {difference(task).words()})"
    )
    if "random" in by:
        text += f"; in random order (mean of {by['random']['rank_seeds']} seeds), {amount(by['random'])}"
    text += "."
    for rank_by, name in (("mlm", "masked-LM importance"), ("random", "random order")):
        row = by.get(rank_by)
        if row is None:
            continue
        versus = difference(row, "vs_task", "vs_task_ci_low", "vs_task_ci_high")
        seed = " (first seed)" if rank_by == "random" else ""
        change = versus.words(loss="loses", gain="gains")
        text += (
            f" With the same {task['heads_prunable']} heads masked in {name}{seed}, the model {change} "
            "against the task ranking."
        )
    return text


def chiang_verdict(summary: list[dict[str, str]], coherence: list[dict[str, str]]) -> str:
    """Whether this run's MLM-importance ranking prunes measurably worse than its task ranking.

    Agrees when masking the task ranking's prunable heads in MLM order loses measurably against task
    order, disagrees when the two rankings make no measurable difference and their maps agree (the
    Spearman interval excludes 0 and is above 0.5), cannot tell otherwise.
    """
    by = {row["rank_by"]: row for row in summary}
    if "mlm" not in by or "task" not in by or not int(by["task"]["heads_prunable"]):
        return ""
    versus = difference(by["mlm"], "vs_task", "vs_task_ci_low", "vs_task_ci_high")
    rho = [
        r for r in coherence if r["statistic"] == "spearman" and "task" in r["map_b"] and "mlm" in r["map_a"]
    ]
    agree_maps = bool(rho) and float(rho[0]["ci_low"]) > 0.5
    agrees: bool | None = None
    if versus.loss:
        agrees = True
    elif not versus.measurable and agree_maps:
        agrees = False
    detail = f"masking in MLM order instead of task order {versus.words(loss='loses', gain='gains')}"
    if rho:
        r = rho[0]
        detail += (
            f", and the two maps correlate at ρ = {float(r['value']):.2f} "
            f"{interval_text(r['ci_low'], r['ci_high'], digits=2)}"
        )
    return f"{CHIANG}; {verdict(agrees)}: {detail}."


def _coherence_sentence(rows: list[dict[str, str]], level: str) -> str:
    spearman = [r for r in rows if r["statistic"] == "spearman"]
    if not spearman:
        return ""
    parts = [
        f"{r['map_a']} vs {r['map_b']}: ρ = {float(r['value']):.2f} "
        f"{interval_text(r['ci_low'], r['ci_high'], digits=2)}"
        for r in spearman
    ]
    return (
        f"Agreement of the importance maps (Spearman, {level} bootstrap interval): " + "; ".join(parts) + "."
    )


def _speed_sentence(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    row = rows[0]
    params, pruned = int(row["params"]), int(row["params_pruned"])
    return (
        f"Removing those {row['heads_pruned']} heads physically takes the parameters from {params:,} to "
        f"{pruned:,} ({100 * (pruned - params) / params:+.1f}%) and a forward pass from "
        f"{1000 * float(row['seconds_per_batch']):.0f} to "
        f"{1000 * float(row['seconds_per_batch_pruned']):.0f} ms per batch ({float(row['speedup']):.2f}x); "
        f"{row['metric']} {float(row['value']):.3f} → {float(row['value_pruned']):.3f} "
        f"(the change {difference(row).words()})."
    )


def _transfer_sentence(rows: list[dict[str, str]]) -> str:
    by = {row["order"]: row for row in rows}
    if not {"full", "prune_then_tune", "tune_then_prune"} <= set(by):
        return ""
    first, after, full = by["prune_then_tune"], by["tune_then_prune"], by["full"]
    metric = full["metric"]
    return (
        f"Pruning {100 * float(first['fraction']):.0f}% of the heads of the pre-trained model by its "
        f"masked-LM importance and then fine-tuning reaches {float(first['value']):.3f} {metric} "
        f"({difference(first).words()} against the full model's {float(full['value']):.3f}); "
        f"fine-tuning first and then pruning the same share by task importance reaches "
        f"{float(after['value']):.3f} ({difference(after).words()})."
    )


def _maps(sec: Section, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    figures = []
    for model, objective in dict.fromkeys((r["model"], r["objective"]) for r in rows):
        mine = [r for r in rows if r["model"] == model and r["objective"] == objective]
        n_layers = max(int(r["layer"]) for r in mine)
        n_heads = max(int(r["head"]) for r in mine) + 1
        matrix = np.full((n_layers, n_heads), np.nan)
        for r in mine:
            matrix[int(r["layer"]) - 1, int(r["head"])] = float(r["normalized"])
        name = f"heads_{model}_{objective}".replace(" ", "_").replace("(", "").replace(")", "")
        figures.append(sec.figure(name, plot_head_importance(matrix, title=f"{model}: {objective}")))
    return figures


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("heads")
    if not rows:
        return None
    figures = _maps(sec, rows)
    curves = sec.table("pruning")
    if curves:
        lines: dict[str, tuple[list[int], list[float]]] = {}
        for r in curves:
            label = r["rank_by"] if r["rank_by"] != "random" else f"random (seed {r['rank_seed']})"
            xs, ys = lines.setdefault(label, ([], []))
            xs.append(int(r["heads_pruned"]))
            ys.append(float(r["value"]))
        fig = plot_layer_curves(
            lines, ylabel=curves[0]["metric"], title="Masking heads, least important first"
        )
        fig.axes[0].set_xlabel("heads masked")
        figures.append(sec.figure("pruning", fig))
    summary = sec.table("head_pruning_summary")
    coherence = sec.table("head_coherence")
    transfer = sec.table("head_transfer")
    sentences = [
        _pruning_sentence(summary),
        _speed_sentence(sec.table("head_speed")),
        _transfer_sentence(transfer),
        _coherence_sentence(coherence, f"{100 * sec.confidence:g}%"),
        chiang_verdict(summary, coherence),
    ]
    return {
        "sentences": [s for s in sentences if s],
        "figures": figures,
        "summary": summary,
        "transfer": transfer,
        "coherence": [r for r in coherence if r["statistic"] in ("spearman", "kendall") or r["k"] == "0.25"],
    }
