"""``tunescope info``: describe an encoder."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def info(
    model: Annotated[
        str | None, typer.Argument(help="Model folder or hub id (default: the embedded all-MiniLM-L6-v2).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Family, layers, heads, hidden size, parameters and whether the checkpoint has an MLM head.

    Examples:

        tunescope info

        tunescope info path/to/my-finetuned-bert --json
    """
    from tunescope.models import load_encoder

    description = load_encoder(model).describe()
    if as_json:
        typer.echo(json.dumps(description, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in description.items():
        table.add_row(
            str(key), f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
