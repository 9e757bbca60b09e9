"""``tunescope tasks``: the registered tasks."""

from __future__ import annotations

import typer


def tasks() -> None:
    """List every task: name, text fields, labels and metric.

    Example:

        tunescope tasks
    """
    from rich.console import Console
    from rich.table import Table

    from tunescope.data import TASKS

    table = Table("task", "texts", "labels", "metric", "splits")
    for name, task in TASKS.items():
        labels = ", ".join(task.label_names) if task.label_names else task.label_kind
        table.add_row(name, " + ".join(task.text_fields), labels, task.metric, ", ".join(task.splits))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("tasks")(tasks)
