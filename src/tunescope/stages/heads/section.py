"""Report section of the ``heads`` stage: importance maps, pruning curves, MLM vs task, before vs after.

Every sentence states rows the stage wrote (``head_pruning_summary``, ``head_coherence``, ``head_speed``,
``head_transfer``); the section only words and draws them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunescope.report._section import Section
from tunescope.report.figures import plot_head_importance, plot_layer_curves

#: mean metrics closer than this read as "as good as"
TIE = 5e-3


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
        f"{loss:g} point(s) of {metric} ({float(task['value_at']):.3f} vs {float(task['full_value']):.3f})"
    )
    if "random" in by:
        text += f"; in random order (mean of {by['random']['n_seeds']} seeds), {amount(by['random'])}"
    text += "."
    mlm = by.get("mlm")
    if mlm is not None:
        gap = float(mlm["mean_value"]) - float(task["mean_value"])
        verdict = (
            "as good as the task ranking"
            if abs(gap) < TIE
            else ("better than the task ranking" if gap > 0 else "worse than the task ranking")
        )
        text += (
            f" Ranked by masked-LM importance, {amount(mlm)} can go; over the "
            f"whole curve its mean {metric} is {float(mlm['mean_value']):.3f} against "
            f"{float(task['mean_value']):.3f}: {verdict}."
        )
    return text


def _coherence_sentence(rows: list[dict[str, str]]) -> str:
    spearman = [r for r in rows if r["statistic"] == "spearman"]
    if not spearman:
        return ""
    parts = [
        f"{r['map_a']} vs {r['map_b']}: ρ = {float(r['value']):.2f} [{float(r['ci_low']):.2f}, "
        f"{float(r['ci_high']):.2f}]"
        for r in spearman
    ]
    return (
        "Agreement of the importance maps (Spearman, 95% bootstrap interval over batches): "
        + "; ".join(parts)
        + "."
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
        f"{row['metric']} {float(row['value']):.3f} → "
        f"{float(row['value_pruned']):.3f}."
    )


def _transfer_sentence(rows: list[dict[str, str]]) -> str:
    by = {row["order"]: row for row in rows}
    if not {"full", "prune_then_tune", "tune_then_prune"} <= set(by):
        return ""
    first, after, full = by["prune_then_tune"], by["tune_then_prune"], by["full"]
    metric = full["metric"]
    return (
        f"Pruning {100 * float(first['fraction']):.0f}% of the heads of the pre-trained model by its "
        f"masked-LM importance and then fine-tuning reaches {float(first['value']):.3f} {metric}; "
        f"fine-tuning first and then pruning the same share by task importance, "
        f"{float(after['value']):.3f}; the full model, "
        f"{float(full['value']):.3f}."
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
            label = r["rank_by"] if r["rank_by"] != "random" else f"random (seed {r['seed']})"
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
        _coherence_sentence(coherence),
    ]
    return {
        "sentences": [s for s in sentences if s],
        "figures": figures,
        "summary": summary,
        "transfer": transfer,
        "coherence": [r for r in coherence if r["statistic"] in ("spearman", "kendall") or r["k"] == "0.25"],
    }
