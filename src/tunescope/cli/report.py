"""``tunescope report``: rebuild report.html from a run folder's results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `tunescope analyze`.")],
) -> None:
    """(Re)draw the figures and write RUN_DIR/report.html from RUN_DIR/results.

    Example:

        tunescope report runs/demo
    """
    from tunescope.report import build_report

    typer.echo(f"report: {build_report(run_dir)}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
